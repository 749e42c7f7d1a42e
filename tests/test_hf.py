"""hf: a local transformers causal LM behind the GPT interface; greedy decoding with and without a KV cache."""

from __future__ import annotations

import sys

import pytest
import torch

from harness.core.errors import InputError
from harness.models.gpt import kv_cache_bytes
from harness.models.reference import load_model


def greedy(model, idx: torch.Tensor, new_tokens: int, cache_kind: str | None) -> torch.Tensor:
    """Greedy continuation of idx [B, T0] by `new_tokens`, recomputing the prefix (no cache) or decoding
    one token at a time through a KV cache of `cache_kind`."""
    B, T0 = idx.shape
    out = idx
    if cache_kind is None:
        for _ in range(new_tokens):
            out = torch.cat([out, model(out)[:, -1:].argmax(-1)], dim=1)
        return out
    cache = model.new_cache(cache_kind, B, T0 + new_tokens)
    logits = model(idx, cache=cache, input_pos=torch.arange(T0))
    for t in range(T0, T0 + new_tokens):
        nxt = logits[:, -1:].argmax(-1)  # [B, 1]
        out = torch.cat([out, nxt], dim=1)
        if t < T0 + new_tokens - 1:
            logits = model(nxt, cache=cache, input_pos=torch.tensor([t]))
    return out


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def hf_dir(request, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if request.param == "gpt2":
        config = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        model = transformers.GPT2LMHeadModel(config)
    else:  # grouped-query attention: 4 query heads share 2 key/value heads
        config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        model = transformers.LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return request.param, path


@torch.no_grad()
def test_greedy_with_dynamic_cache_matches_no_cache_and_transformers_generate(hf_dir):
    _, path = hf_dir
    model = load_model(f"hf:{path}", "cpu")
    assert not model.training
    idx = torch.randint(97, (2, 7), generator=torch.Generator().manual_seed(1))
    with_cache = greedy(model, idx, 12, "dynamic")
    without = greedy(model, idx, 12, None)
    reference = model.hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=12, do_sample=False,
                                  pad_token_id=0)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache, reference)


@torch.no_grad()
def test_static_cache_matches_dynamic(hf_dir):
    _, path = hf_dir
    model = load_model(f"hf:{path}", "cpu")
    idx = torch.randint(97, (2, 5), generator=torch.Generator().manual_seed(2))
    try:
        cache = model.new_cache("static", 2, 16)
    except InputError as e:
        pytest.skip(str(e))
    assert cache.nbytes() == kv_cache_bytes(model.args, 2, 16, 4)  # pre-allocated, fp32
    assert torch.equal(greedy(model, idx, 8, "static"), greedy(model, idx, 8, "dynamic"))


@torch.no_grad()
def test_shape_facts_and_loss(hf_dir):
    kind, path = hf_dir
    model = load_model(f"hf:{path}", "cpu")
    assert (model.n_layer, model.head_dim, model.vocab_size) == (2, 8, 97)
    assert model.n_head == (4 if kind == "gpt2" else 2)  # key/value heads, what the KV cache stores
    cache = model.new_cache("dynamic", 1, 16)
    model(torch.zeros(1, 5, dtype=torch.long), cache=cache, input_pos=torch.arange(5))
    assert cache.nbytes() == kv_cache_bytes(model.args, 1, 5, 4)
    x = torch.randint(97, (2, 9))
    logits, loss = model(x, targets=x)
    assert logits.shape == (2, 9, 97)
    assert abs(float(loss) - float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()))) < 1e-6


def test_dtype_is_applied(hf_dir):
    _, path = hf_dir
    model = load_model(f"hf:{path}", "cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_missing_directory_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(InputError, match="no config.json"):
        load_model(f"hf:{tmp_path / 'nope'}", "cpu")


def test_without_transformers_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(InputError, match=r"pip install 'harness\[hf\]'"):
        load_model(f"hf:{tmp_path}", "cpu")


@torch.no_grad()
@pytest.mark.parametrize("cache_kind", ["none", "dynamic", "static"])
def test_left_padded_batch_equals_each_prompt_alone(hf_dir, cache_kind):
    from harness.workloads.generate.decode import decode_one_token, generate_cached, generate_no_cache

    _, path = hf_dir
    model = load_model(f"hf:{path}", "cpu")
    prompts = torch.randint(1, 97, (3, 10), generator=torch.Generator().manual_seed(2))
    pad = torch.tensor([0, 3, 6])
    prompts[torch.arange(10)[None, :] < pad[:, None]] = 0
    argmax = lambda logits: logits.argmax(-1)  # noqa: E731
    if cache_kind == "none":
        batched = generate_no_cache(model, prompts, 8, argmax, pad)
    else:
        batched = generate_cached(model, prompts, 8, argmax, model.new_cache(cache_kind, 3, 18), decode_one_token, pad)
    for i in range(3):
        alone = greedy(model, prompts[i:i + 1, int(pad[i]):], 8, "dynamic")[0, 10 - int(pad[i]):]
        assert torch.equal(batched[i], alone), (i, batched[i], alone)


@pytest.fixture(scope="module")
def hf_draft_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    config = transformers.LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("draft")
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def speculative_checks(target_dir, draft_dir):
    from harness_plugins.kv_cache import KVCache, KVCacheParams
    from harness_plugins.speculative_decoding import SpeculativeDecoding, SpeculativeParams

    from harness.core.workload import RunContext
    from harness.workloads.generate import GenerateSpec, GenerateWorkload

    ctx = RunContext(device=torch.device("cpu"), env={}, seed=0)
    spec = GenerateSpec(model=f"hf:{target_dir}", prompts="synthetic", batch=1, prompt_len=12, new_tokens=16)
    base = GenerateWorkload().build(spec, [KVCache(KVCacheParams("static"))], ctx)
    opt = SpeculativeDecoding(SpeculativeParams(draft=f"hf:{draft_dir}", gamma=3))
    run = GenerateWorkload().build(spec, [opt], ctx)
    checks = opt.check(base.outputs(), run.outputs())
    run.timed = True  # acceptance statistics count timed generates only
    run.step()
    return checks, run.knobs.metric_fns[-1](0.1)  # the figures of the timed generate


def test_speculative_decoding_with_hf_models_rolls_back_rejected_positions(hf_dir, hf_draft_dir, monkeypatch):
    from harness.models.hf import HFCache

    _, path = hf_dir
    checks, figures = speculative_checks(path, hf_draft_dir)
    assert figures["accepted"] < figures["drafted"]  # an untrained draft: most proposals are rejected
    assert [c.passed for c in checks] == [True]
    model = load_model(f"hf:{path}", "cpu")
    running_length = any(hasattr(layer, "cumulative_length") for layer in
                         getattr(model.new_cache("static", 1, 8).inner, "layers", []))
    if running_length:  # transformers >= 5 writes at its own running length: without seek it runs off the cache
        monkeypatch.setattr(HFCache, "seek", lambda self, position: None)
        with pytest.raises(IndexError):
            speculative_checks(path, hf_draft_dir)


def test_text_prompts_use_the_models_own_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from harness.core.workload import RunContext
    from harness.models import data
    from harness.workloads.generate import GenerateSpec, GenerateWorkload

    train, val = data._split_bytes(data.DEFAULT_MAX_BYTES)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator([train[:100_000].decode("utf-8", "replace")],
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe).save_pretrained(tmp_path)
    config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=4, max_position_embeddings=64)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)

    run = GenerateWorkload().build(GenerateSpec(model=f"hf:{tmp_path}", batch=2, prompt_len=16, new_tokens=4), [],
                                   RunContext(device=torch.device("cpu"), env={}, seed=0))
    tokenizer = run.model.tokenizer
    assert tokenizer is not None and run.prompts.shape == (2, 16) and int(run.prompts.max()) >= 256  # merges used
    text = val.decode("utf-8", "replace")
    for row in run.prompts:
        assert tokenizer.decode(row) in text  # a window of the held-out text, in the model's vocabulary
    assert run.outputs()["perplexity"] > 0


def test_tied_head_and_mask_buffers_are_counted_once(tmp_path):
    """GPT-2 ties its output head to the input embedding: one matrix in every byte and parameter count."""
    from harness.core.workload import RunContext
    from harness.models.accounting import weight_bytes
    from harness.workloads.generate import GenerateSpec, GenerateWorkload

    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    model = load_model(f"hf:{tmp_path}", "cpu")
    hf = model.hf
    assert hf.lm_head.weight is hf.transformer.wte.weight
    unique = sum(p.numel() for p in hf.parameters()) * 4  # parameters() yields a tied tensor once
    ctx = RunContext(device=torch.device("cpu"), env={}, seed=0)
    spec = GenerateSpec(model=f"hf:{tmp_path}", prompt_len=8, new_tokens=4, prompts="synthetic")
    run = GenerateWorkload().build(spec, [], ctx)
    memory = run.memory()
    assert memory["weights"] == unique
    buffers = sum(b.numel() * b.element_size() for b in hf.buffers())
    assert memory.get("buffers", 0) == buffers  # masks and the like, apart from the weights
    # bytes a decode step reads: everything but the position lookup; the tied head is read as the head
    assert weight_bytes(run.model) == unique - hf.transformer.wpe.weight.numel() * 4
    # 6N counts the head's matmul once; lookups (token and position) are not matmuls
    matmul = sum(p.numel() for p in hf.parameters()) - hf.transformer.wpe.weight.numel()
    assert model.num_params(matmul_only=True) == matmul


@pytest.mark.parametrize("kind", ["none", "dynamic", "static"])
def test_library_generate_gives_the_harness_tokens_with_each_cache_implementation(hf_dir, kind):
    """decoder: library times transformers' own generate(); its tokens equal the harness loop's, its cache is
    measured like the harness's, and ITL comes from a streamer."""
    from harness_plugins.kv_cache import KVCache, KVCacheParams

    from harness.core.workload import RunContext
    from harness.workloads.generate import GenerateSpec, GenerateWorkload

    _, path = hf_dir
    ctx = RunContext(device=torch.device("cpu"), env={}, seed=0)
    common = {"model": f"hf:{path}", "prompts": "synthetic", "batch": 2, "prompt_len": 12, "new_tokens": 10}
    harness_run = GenerateWorkload().build(GenerateSpec(**common), [], ctx)
    opts = [] if kind == "none" else [KVCache(KVCacheParams(kind))]
    library_run = GenerateWorkload().build(GenerateSpec(**common, decoder="library"), opts, ctx)
    assert library_run.info["decoder"] == "library"
    base, out = harness_run.outputs(), library_run.outputs()
    assert torch.equal(base["tokens"], out["tokens"]) and out["tokens"].shape == (2, 10)
    if opts:
        checks = {c.name: c for c in opts[0].check(base, out)}
        assert all(c.passed for c in checks.values()), checks  # tokens, and bytes = the formula
    extra = library_run.extra_metrics(0.1)
    assert extra["itl_gaps"] == 9 and extra["itl_p50_s"] > 0  # one time per decoded token of the batch


def test_library_assisted_generation_keeps_the_targets_greedy_tokens(hf_dir, hf_draft_dir):
    from harness_plugins.kv_cache import KVCache, KVCacheParams
    from harness_plugins.speculative_decoding import SpeculativeDecoding, SpeculativeParams

    from harness.core.workload import RunContext
    from harness.workloads.generate import GenerateSpec, GenerateWorkload

    _, path = hf_dir
    ctx = RunContext(device=torch.device("cpu"), env={}, seed=0)
    spec = GenerateSpec(model=f"hf:{path}", prompts="synthetic", batch=2, prompt_len=12, new_tokens=16,
                        decoder="library")
    base = GenerateWorkload().build(spec, [KVCache(KVCacheParams("dynamic"))], ctx)
    opt = SpeculativeDecoding(SpeculativeParams(draft=f"hf:{hf_draft_dir}", gamma=3))
    opt.validate(spec, [opt])
    run = GenerateWorkload().build(spec, [opt], ctx)
    assert run.info["assisted_generation"] == "transformers" and run.knobs.layout == "sequential"
    assert [c.passed for c in opt.check(base.outputs(), run.outputs())] == [True]


def test_library_decoder_needs_an_hf_model_and_greedy_decoding(hf_dir):
    from harness.core.optimization import ParamError
    from harness.workloads.generate import GenerateSpec

    with pytest.raises(ParamError, match="needs an hf: model") as err:
        GenerateSpec(model="nano", decoder="library")
    assert err.value.field == "decoder"
    with pytest.raises(ParamError, match="sampling: greedy"):
        GenerateSpec(model=f"hf:{hf_dir[1]}", decoder="library", sampling="sample", prompt_len=8, new_tokens=8)
