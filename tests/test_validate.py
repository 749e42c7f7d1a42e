"""What follows from the suite plus what can be read without running (a model's config.json, a plugin's
parameters against the workload and the case's other plugins) is an error at validate time: file:line: field:
message, exit 2, before any case runs and with nothing written."""

from __future__ import annotations

import pytest

from harness.core.errors import InputError
from harness.core.plugins import load_registry
from harness.core.suite import load_suite
from tests.conftest import harness_cli

HEAD = """\
name: v
device: cpu
workloads:
  gen: {type: generate, model: MODEL, prompt_len: 60, new_tokens: 8, prompts: PROMPTS}
  train: {type: train, model: nano, batch: 6, seq_len: 32}
cases:
"""


@pytest.fixture(scope="module")
def registry():
    return load_registry([])


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A tiny local GPT-2: 64 positions, a 100-token vocabulary, no tokenizer files (config.json is what counts)."""
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(vocab_size=100, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path


def suite_text(cases: str, model: str = "nano", prompts: str = "synthetic", measure: str = "") -> str:
    head = HEAD.replace("MODEL", model).replace("PROMPTS", prompts)
    return head.replace("cases:\n", f"{measure}cases:\n") + cases


def error(tmp_path, registry, text: str) -> InputError:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_suite(path, registry)
    return info.value


CASE = "  - workload: gen\n    plugins: [kv_cache]\n"


@pytest.mark.parametrize("workload, case, field, words", [
    ("{type: serve, model: nano, prompt_max: 200, output_max: 100}", "plugins: [continuous_batching]",
     "workloads.serve.output_max", "exceeds the 'nano' context of 256"),
    ("{type: serve, model: nano}", "plugins: [kv_cache]", "cases[0].plugins[0].kv_cache",
     "applies to GenerateAPI runs, but 'serve' (type: serve) runs ServeRun, which lacks"),
    ("{type: generate, model: nano}", "plugins: [{kv_cache: {kind: dynamic}}]\n    serving: {slo: {ttft_p90_s: 1}}",
     "cases[0].serving",
     "a serving search is offered by serve workloads; 'serve' is type: generate, which offers capacity"),
], ids=["serve-context", "kv_cache-on-serve", "search-on-generate"])
def test_a_serve_workload_and_its_plugins_are_checked_at_validate(tmp_path, registry, workload, case, field, words):
    text = f"name: v\ndevice: cpu\nworkloads:\n  serve: {workload}\ncases:\n  - workload: serve\n    {case}\n"
    err = error(tmp_path, registry, text)
    assert err.field == field and words in str(err), err


def test_hf_context_too_short_is_found_at_validate(tmp_path, registry, gpt2_dir):
    text = suite_text(CASE, model=f"hf:{gpt2_dir}")
    err = error(tmp_path, registry, text)
    assert err.line == 4 and err.field == "workloads.gen.new_tokens"
    assert "prompt_len + new_tokens = 68 exceeds" in str(err) and "context of 64 positions" in str(err)
    path = tmp_path / "suite.yaml"
    out = tmp_path / "out"
    run = harness_cli("run", path, "--out", out)
    assert run.returncode == 2 and f"{path}:4: workloads.gen.new_tokens:" in run.stderr and not out.exists()
    assert harness_cli("validate", path).returncode == 2


def test_text_prompts_beyond_a_small_vocabulary(tmp_path, registry, gpt2_dir):
    text = suite_text(CASE, model=f"hf:{gpt2_dir}", prompts="text").replace("prompt_len: 60", "prompt_len: 16")
    err = error(tmp_path, registry, text)
    assert err.field == "workloads.gen.prompts" and "100-token vocabulary" in str(err)


def test_missing_hf_folder_is_bad_input(tmp_path, registry):
    err = error(tmp_path, registry, suite_text(CASE, model=f"hf:{tmp_path / 'nowhere'}"))
    assert err.field == "workloads.gen.model" and "no config.json" in str(err)
    path = tmp_path / "suite.yaml"
    assert harness_cli("run", path, "--out", tmp_path / "o").returncode == 2 and not (tmp_path / "o").exists()


def test_one_sample_is_not_enough(tmp_path, registry):
    err = error(tmp_path, registry, suite_text(CASE, measure="measure: {min_samples: 1}\n"))
    assert err.field == "measure.min_samples" and "at least 2 samples" in str(err)


@pytest.mark.parametrize("case, field, words", [
    ("  - workload: gen\n    plugins: [{speculative_decoding: {draft: PATH, gamma: 2}}]\n",
     "cases[0].plugins[0].speculative_decoding.draft", "vocabulary (100 tokens) differs"),
    ("  - workload: gen\n    plugins: [{speculative_decoding: {draft: micro, gamma: 32}}]\n",
     "cases[0].plugins[0].speculative_decoding.gamma", "exceed the"),
    ("  - workload: gen\n    plugins: [speculative_decoding, {batching: {batch_size: 2}}]\n",
     "cases[0].plugins[0].speculative_decoding", "one sequence at a time"),
    ("  - workload: gen\n    plugins: [continuous_batching]\n", "cases[0].plugins[0].continuous_batching",
     "applies to ServeAPI runs, but 'gen' (type: generate) runs GenerateRun, which lacks"),
    ("  - workload: gen\n    plugins: [{batching: {prompt_min: 61}}]\n",
     "cases[0].plugins[0].batching.prompt_min", "prompt_len 60"),
    ("  - workload: train\n    plugins: [ddp, lora]\n", "cases[0].plugins[1].lora", "before ddp"),
    ("  - workload: train\n    plugins: [{gradient_accumulation: {micro_batches: 4}}]\n",
     "cases[0].plugins[0].gradient_accumulation.micro_batches", "batch of 6"),
    ("  - workload: train\n    plugins: [ddp, {zero: {stage: fsdp_full}}]\n",
     "cases[0].plugins[1].zero", "replaces DDP"),
    ("  - workload: train\n    plugins: [{ddp: {world_size: 4}}]\n", "cases[0].plugins[0].ddp.world_size",
     "batch of 6 does not split over 4 ranks"),
    ("  - workload: train\n    plugins: [{zero: {stage: zero1, world_size: 3}}]\n    baseline: [ddp]\n",
     "cases[0].baseline[0].ddp", "has world_size 2 but the case runs 3"),
    ("  - workload: gen\n    plugins: [kv_cache, {kv_cache: {kind: static}}]\n", "cases[0].plugins[0].kv_cache",
     "listed twice"),
], ids=["draft-vocab", "draft-context", "spec+batched", "serving-on-generate", "prompt_min", "lora-order",
        "micro-batches", "fsdp+ddp", "ddp-batch", "world-sizes", "twice"])
def test_plugin_parameters_against_the_workload_and_each_other(tmp_path, registry, gpt2_dir, case, field, words):
    text = suite_text(case.replace("PATH", f"hf:{gpt2_dir}")).replace("prompt_len: 60", "prompt_len: 40")
    if "gamma: 32" in case:  # 40 + 190 + 32 + 1 positions for the static caches: more than micro's 256
        text = text.replace("new_tokens: 8", "new_tokens: 190")
    text = text.replace("[{batching: {prompt_min: 61}}]", "[{batching: {prompt_min: 41}}]").replace(
        "prompt_len 60", "prompt_len 40")
    err = error(tmp_path, registry, text)
    assert err.field == field, err
    assert words.replace("prompt_len 60", "prompt_len 40") in str(err)
    assert err.line in (8, 9)  # the case's plugins (or baseline) line
