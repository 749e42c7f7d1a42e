"""Inference plugins on tiny models: each invariant holds, and a deliberately broken variant is caught."""

import pytest
import torch
from harness_plugins import continuous_batching as cb
from harness_plugins import speculative_decoding as sd
from harness_plugins.batching import Batching, BatchingParams
from harness_plugins.distillation import Distillation, DistillationParams
from harness_plugins.kv_cache import KVCache, KVCacheParams
from harness_plugins.quantization import Quantization, QuantizationParams

from harness.core.optimization import ParamError, build_params
from harness.core.workload import RunContext
from harness.models.gpt import StaticCache
from harness.workloads import serve
from harness.workloads.generate import GenerateSpec, GenerateWorkload

CTX = RunContext(device=torch.device("cpu"), env={}, seed=0)
SPEC = {"model": "nano", "prompts": "synthetic", "batch": 2, "prompt_len": 16, "new_tokens": 12}


def pair(opt, baseline=(), **spec):
    """Build baseline and optimized runs as the worker does, return (checks, optimized run)."""
    spec = GenerateSpec(**{**SPEC, **spec})
    base = GenerateWorkload().build(spec, list(baseline), CTX)
    run = GenerateWorkload().build(spec, list(baseline) + [opt], CTX)
    return opt.check(base.outputs(), run.outputs()), run


def passed(checks):
    return {c.name: c.passed for c in checks}


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_kv_cache_keeps_tokens_and_formula(kind):
    checks, run = pair(KVCache(KVCacheParams(kind)))
    assert passed(checks) == {"tokens_identical_to_no_cache": True, "kv_bytes_match_formula": True}
    assert run.info["cache"] == "static" if kind == "static" else "dynamic"


def test_kv_cache_that_drops_the_last_position_is_caught(monkeypatch):
    update = StaticCache.update

    def lossy(self, layer, k, v, input_pos):
        keys, values, mask = update(self, layer, k, v, input_pos)
        return keys, values, mask & (torch.arange(self.max_len)[None, :] < input_pos[:, None])  # hides itself

    monkeypatch.setattr(StaticCache, "update", lossy)
    checks, _ = pair(KVCache(KVCacheParams("static")))
    assert passed(checks)["tokens_identical_to_no_cache"] is False


def test_cuda_graphs_unsupported_on_cpu():
    assert "CUDA" in KVCache(KVCacheParams("static_cuda_graphs")).supports({"device": "cpu"})
    assert KVCache(KVCacheParams("static")).supports({"device": "cpu"}) is None


@pytest.mark.parametrize("method", ["int8_dynamic", "int8_weight_only"])
def test_quantization_shrinks_weights_within_perplexity_bound(method):
    checks, run = pair(Quantization(QuantizationParams(method=method)), [KVCache()])
    assert passed(checks) == {"perplexity_within_bound": True, "weights_smaller": True}
    assert run.info["weight_bytes_after"] < 0.35 * run.info["weight_bytes_before"]
    assert 0 <= checks[0].values["top1_agreement"] <= 1


def test_quantization_bound_catches_a_damaged_model():
    opt = Quantization(QuantizationParams(method="int8_weight_only", max_ppl_increase=0.0))
    apply = opt.apply

    def damaging(run):  # a "quantizer" that destroys the output head
        apply(run)
        run.model.lm_head.scales.mul_(40.0)

    opt.apply = damaging
    checks, _ = pair(opt)
    assert passed(checks)["perplexity_within_bound"] is False


def test_quantization_supports():
    assert "CPU only" in Quantization(QuantizationParams("int8_dynamic")).supports({"device": "cuda:0"})
    assert "CUDA" in Quantization(QuantizationParams("int4_weight_only")).supports({"device": "cpu"})
    with pytest.raises(ParamError):
        build_params(QuantizationParams, {"method": "int2"})


def speculative_metrics(run) -> dict:
    """The speculative_decoding figures of `run` (its metric function: the counts live with the run, not on the
    optimization)."""
    return run.knobs.metric_fns[-1](0.1)


@pytest.mark.parametrize("draft, gamma", [("nano", 3), ("micro", 4)])
def test_speculative_greedy_equals_target(draft, gamma):
    opt = sd.SpeculativeDecoding(sd.SpeculativeParams(draft=draft, gamma=gamma))
    checks, run = pair(opt, [KVCache()], batch=1, new_tokens=20)
    assert passed(checks) == {"tokens_identical_to_target_greedy": True}
    run.timed = True
    run.step()
    m = speculative_metrics(run)
    if draft == "nano":  # the draft is the target itself: every proposal is accepted
        assert m["acceptance_rate"] == 1.0 and m["expected_tokens_per_step"] == gamma + 1
    assert 0 <= m["acceptance_rate"] <= 1 and m["tokens_per_target_forward"] >= 1 and m["cost_ratio_c"] > 0


def test_speculative_tokens_arrive_in_bursts():
    opt = sd.SpeculativeDecoding(sd.SpeculativeParams(draft="nano", gamma=3))  # the target itself: all accepted
    _, run = pair(opt, [KVCache()], batch=1, new_tokens=13)
    m = run.inter_token_latencies()
    # token 1 from the prefill, then 3 rounds of gamma + 1 = 4 tokens each: 12 gaps, 3 of them between rounds
    assert m["itl_gaps"] == 12 and m["itl_p50_s"] == 0.0 and m["itl_max_s"] > 0


def test_speculative_verifier_that_accepts_everything_is_caught(monkeypatch):
    monkeypatch.setattr(sd, "greedy_accept", lambda draft_tokens, target_tokens: len(draft_tokens))
    opt = sd.SpeculativeDecoding(sd.SpeculativeParams(draft="micro", gamma=4))
    checks, _ = pair(opt, [KVCache()], batch=1, new_tokens=20)
    assert passed(checks) == {"tokens_identical_to_target_greedy": False}


def test_speculative_rejection_sampling_with_identical_draft_accepts_all():
    opt = sd.SpeculativeDecoding(sd.SpeculativeParams(draft="nano", gamma=3))
    checks, run = pair(opt, sampling="sample", top_k=8, batch=1)
    assert checks == [] and speculative_metrics(run)["drafted"] == 0  # the correctness pass is untimed (Run.timed)
    run.timed = True
    run.step()
    m = speculative_metrics(run)
    assert m["accepted"] == m["drafted"] > 0


def test_speculative_statistics_count_the_timed_generates_only():
    opt = sd.SpeculativeDecoding(sd.SpeculativeParams(draft="nano", gamma=3))
    _, run = pair(opt, [KVCache()], batch=2, new_tokens=13)
    run.step()  # a warm-up call
    run.timed = True
    run.step()
    run.step()
    run.timed = False
    run.extra_metrics(0.1)  # TTFT probes and the ITL generate are not timed either
    # 2 timed generates x 2 rows x (prefill + 3 rounds of gamma + 1 tokens)
    m = speculative_metrics(run)
    assert (m["drafted"], m["accepted"], m["target_forwards"]) == (36, 36, 16)
    assert m["tokens_per_target_forward"] == 52 / 16


def test_speculative_batch_is_a_sequential_layout():
    """Rows decoded one after another: per-sequence time is e2e / batch, so TPOT does not double at batch 2."""
    one = pair(sd.SpeculativeDecoding(sd.SpeculativeParams(draft="micro", gamma=2)), [KVCache()], batch=1)[1]
    checks, two = pair(sd.SpeculativeDecoding(sd.SpeculativeParams(draft="micro", gamma=2)), [KVCache()], batch=2)
    assert two.knobs.layout == "sequential" and all(passed(checks).values())
    m1, m2 = one.extra_metrics(0.10), two.extra_metrics(0.20)  # batch 2 takes twice as long, as sequential rows do
    assert m2["tokens_per_s_per_seq"] == pytest.approx(m1["tokens_per_s_per_seq"])
    assert m2["tokens_per_s_total"] == pytest.approx(m1["tokens_per_s_total"])
    assert m2["tpot_s"] == pytest.approx((0.10 - m2["ttft_s"]) / 11)
    with pytest.raises(ValueError, match="one sequence at a time"):
        two.knobs.layout = "batched"
        two.generate(two.prompts, 2)


def test_speculative_gamma_validation():
    with pytest.raises(ParamError):
        build_params(sd.SpeculativeParams, {"gamma": 0})


def test_batching_equals_one_at_a_time():
    spec = GenerateSpec(**{**SPEC, "batch": 1})
    seq = GenerateWorkload().build(spec, [KVCache(), Batching(BatchingParams(batch_size=4, mode="sequential"))], CTX)
    opt = Batching(BatchingParams(batch_size=4))
    run = GenerateWorkload().build(spec, [KVCache(), opt], CTX)
    assert seq.knobs.layout == "sequential" and seq.batch == run.batch == 4 and run.units["tokens"] == 48
    assert passed(opt.check(seq.outputs(), run.outputs())) == {"tokens_identical_to_one_at_a_time": True}


def ragged_pair(cache=(), prompt_min=3, **spec):
    """A sequential and a batched run of the same ragged prompts (lengths prompt_min..16, left-padded)."""
    spec = GenerateSpec(**{**SPEC, "batch": 5, **spec})
    seq = GenerateWorkload().build(spec, [*cache, Batching(BatchingParams(mode="sequential",
                                                                         prompt_min=prompt_min))], CTX)
    opt = Batching(BatchingParams(prompt_min=prompt_min))
    return seq, GenerateWorkload().build(spec, [*cache, opt], CTX), opt


@pytest.mark.parametrize("cache", ["none", "dynamic", "static"])
def test_ragged_batching_equals_each_prompt_alone(cache):
    seq, run, opt = ragged_pair([KVCache(KVCacheParams(cache))] if cache != "none" else [])
    lengths = 16 - run.pad
    assert lengths.min() >= 3 and len(set(lengths.tolist())) > 1 and 0 < run.info["padding_fraction"] < 1
    assert bool((run.prompts[0, : int(run.pad[0])] == 0).all())  # the padding is the pad token
    assert passed(opt.check(seq.outputs(), run.outputs())) == {"tokens_identical_to_one_at_a_time": True}
    alone = GenerateWorkload().build(GenerateSpec(**{**SPEC, "batch": 1}), [], CTX)
    i = int(run.pad.argmax())  # the shortest prompt, generated by hand without padding
    assert torch.equal(alone.generate(run.prompts[i:i + 1, int(run.pad[i]):], 12)[0], run.outputs()["tokens"][i])


def test_ragged_batching_ignores_what_the_padding_holds():
    _, run, _ = ragged_pair([KVCache()])
    before = run.outputs()["tokens"]
    padding = torch.arange(16)[None, :] < run.pad[:, None]
    run.prompts = run.prompts.masked_fill(padding, 123)
    assert torch.equal(run.outputs()["tokens"], before)


@pytest.mark.parametrize("broken", ["attends_to_padding", "positions_not_shifted"])
def test_ragged_batching_with_broken_padding_is_caught(monkeypatch, broken):
    import harness.models.gpt

    seq, run, opt = ragged_pair([KVCache()])
    expected = seq.outputs()
    if broken == "attends_to_padding":
        real = harness.models.gpt.padding_mask
        monkeypatch.setattr(harness.models.gpt, "padding_mask", lambda pos, pad, n: real(pos, torch.zeros_like(pad), n))
    else:
        monkeypatch.setattr(harness.models.gpt.GPT, "forward", unshifted_forward)
    assert passed(opt.check(expected, run.outputs())) == {"tokens_identical_to_one_at_a_time": False}


def unshifted_forward(model, idx, targets=None, cache=None, input_pos=None, pad=None):
    """GPT.forward with the padding masked but every row's positions counted from column 0 (a broken variant)."""
    input_pos = torch.arange(idx.size(1)) if input_pos is None else input_pos
    x = model.wte(idx) + model.wpe(input_pos)
    for block in model.blocks:
        x = block(x, cache, input_pos, pad)
    return model.lm_head(model.ln_f(x))


def test_ragged_batching_errors_and_baseline_hint():
    with pytest.raises(ParamError) as error:
        build_params(BatchingParams, {"prompt_min": 0})
    assert error.value.field == "prompt_min"
    with pytest.raises(ParamError, match="prompt_len 16") as error:
        ragged_pair(prompt_min=17)
    assert error.value.field == "prompt_min"
    spec = GenerateSpec(**{**SPEC, "batch": 5})
    seq = GenerateWorkload().build(spec, [Batching(BatchingParams(mode="sequential"))], CTX)  # no prompt_min
    _, run, opt = ragged_pair()
    check = opt.check(seq.outputs(), run.outputs())[0]
    assert not check.passed and check.values["hint"] == "give the baseline's batching entry the same prompt_min"


CB = {"model": "nano", "prompts": "synthetic", "requests": 6, "rate": 200.0, "slots": 3, "prompt_min": 4,
      "prompt_max": 12, "output_min": 1, "output_max": 10}


def serve_pair(**spec):
    """The static-scheduler baseline and the continuous_batching side of one trace, as the worker builds them."""
    spec = build_params(serve.ServeSpec, {**CB, **spec})
    opt = cb.ContinuousBatching()
    b, o = (serve.ServeWorkload().build(spec, plugins, CTX) for plugins in ([], [opt]))
    assert (b.knobs.scheduler, o.knobs.scheduler) == ("static", "continuous")
    return opt.check(b.outputs(), o.outputs()), o


def test_continuous_batching_serves_every_request_as_alone():
    checks, run = serve_pair()
    assert all(passed(checks).values()), checks
    run.timed = True
    run.step()
    m = run.extra_metrics(0.5)
    assert m["requests"] == 6 and m["ttft_p50_s"] >= 0 and 0 <= m["slo_attainment"] <= 1
    assert run.units == {"tokens": sum(r.out_len for r in run.trace), "requests": 6}


def test_continuous_batching_statistics_cover_the_timed_serves_only():
    _, run = serve_pair()
    assert run.extra_metrics(0.5).get("ttft_p50_s") is None  # outputs() served the trace, untimed
    run.step()  # warm-up and memory-probe serves are untimed too
    run.step()
    assert run.records == [] and run.decode_steps == 0
    run.timed = True
    run.step()
    assert len(run.records) == 6


def test_continuous_batching_one_token_requests_have_no_tpot():
    _, run = serve_pair(output_min=1, output_max=1)
    run.timed = True
    run.step()
    m = run.extra_metrics(0.5)
    assert all(m[f"tpot_{q}_s"] is None for q in ("p50", "p90", "p99", "mean"))
    assert m["ttft_p50_s"] > 0 and m["slo_attainment"] == 1.0  # no TPOT to miss; TTFT well within 0.25 s
    assert m["slot_occupancy"] == 0.0  # every token came from a prefill: no decode step carried a request
    mixed = serve_pair(output_min=1, output_max=2)[1]
    mixed.timed = True
    mixed.step()
    tpots = [r["tpot"] for r in mixed.records if r["tpot"] is not None]
    assert 0 < len(tpots) < 6 and min(tpots) > 0
    assert mixed.extra_metrics(0.5)["tpot_mean_s"] == pytest.approx(sum(tpots) / len(tpots))


def test_continuous_batching_excuses_divergence_only_at_a_near_tie():
    ties = torch.full((3, 4), -1)
    ties[:, 0] = torch.tensor([1, 2, 3])
    ties[1, 1] = 5  # 5 was within the band of 2 at the second position
    reference = {"trace_ids": [0, 1], "alone": {0: [1, 2, 3], 1: [1, 2, 3]}, "ties": {0: ties, 1: ties}}
    check = serve.equal_alone("x", [(0, [1, 2, 3]), (1, [1, 5, 6])], reference)
    assert check.passed and check.values["diverging_at_near_ties"] == [1]
    check = serve.equal_alone("x", [(0, [1, 7, 3]), (1, [1, 2, 3])], reference)
    assert not check.passed and check.values["differing"] == [0]


def test_continuous_batching_wrong_mask_is_caught(monkeypatch):
    """A slot that attends to every position of its row (the empty ones ahead, and the stale keys an earlier
    request left there) serves different tokens than the request alone."""
    monkeypatch.setattr(serve.SlotCache, "visible",
                        lambda self, pos: (self.positions[None] >= 0).expand(len(pos), -1)[:, None, None])
    checks, _ = serve_pair()
    assert passed(checks)["outputs_equal_serving_alone"] is False


def test_continuous_batching_lost_request_is_caught(monkeypatch):
    serve_all = serve.ServeRun.serve
    monkeypatch.setattr(serve.ServeRun, "serve", lambda self, trace: serve_all(self, trace)[:-1])
    checks, _ = serve_pair()
    assert passed(checks)["every_request_served_once"] is False


def test_serve_spec_errors():
    for values, field in (({"output_min": 10, "output_max": 5}, "output_max"), ({"rate": 0}, "rate"),
                          ({"model": "hf:/nowhere"}, "model"), ({"max_batched_tokens": 0}, "max_batched_tokens")):
        with pytest.raises(ParamError) as err:
            build_params(serve.ServeSpec, values)
        assert err.value.field == field


def test_distillation_reports_quality_against_bound():
    opt = Distillation(DistillationParams(student="micro", steps=5, batch=2, seq_len=32))
    checks, run = pair(opt, new_tokens=4)
    assert checks[0].name == "student_perplexity_within_bound" and checks[0].passed
    assert run.info["student_weight_bytes"] < run.info["teacher_weight_bytes"]
    strict = Distillation(DistillationParams(student="micro", steps=1, max_ppl_ratio=1.0))
    bad = strict.check({"perplexity": 10.0, "top1": torch.zeros(2), "weight_bytes": 4},
                       {"perplexity": 30.0, "top1": torch.ones(2), "weight_bytes": 1})
    assert not bad[0].passed and bad[0].values["top1_agreement"] == 0.0
    with pytest.raises(ParamError):
        build_params(DistillationParams, {"student": "huge"})


def test_int8_weight_only_kernel_paths_agree_and_are_counted():
    """The fused int8 kernel and gpt-fast's cast-then-linear form give the same result; each call is counted
    under the path it took (on CUDA, inputs above FUSED_MAX_ROWS rows take the cast path)."""
    from harness_plugins.quantization import Int8WeightOnlyLinear

    torch.manual_seed(0)
    q = Int8WeightOnlyLinear(torch.nn.Linear(32, 16))
    x = torch.randn(3, 5, 32)
    before = dict(Int8WeightOnlyLinear.calls)
    fused = q(x)
    q.fused = False
    cast = q(x)
    assert torch.allclose(fused, cast, atol=1e-5)
    deq = torch.nn.functional.linear(x, q.weight.float() * q.scales[:, None], q.bias)
    assert torch.allclose(cast, deq, atol=1e-5)
    assert {k: Int8WeightOnlyLinear.calls[k] - before[k] for k in before} == {"int8pack_mm": 1, "cast_linear": 1}


def test_torchao_configs_keep_global_settings_and_use_a_packing_torch_ships(monkeypatch):
    import dataclasses
    import sys
    import types

    from harness_plugins.quantization import torchao_quantize

    @dataclasses.dataclass
    class Int4WeightOnlyConfig:
        group_size: int = 128
        int4_packing_format: str = "plain"
        set_inductor_config: bool = True

    applied = []
    fake = types.ModuleType("torchao.quantization")
    fake.Int4WeightOnlyConfig = Int4WeightOnlyConfig
    fake.quantize_ = lambda model, config: applied.append(config)
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", fake)
    model, text = torchao_quantize(torch.nn.Linear(4, 4), "int4_weight_only")
    assert applied == [Int4WeightOnlyConfig(int4_packing_format="tile_packed_to_4d", set_inductor_config=False)]
    assert "set_inductor_config=False" in text and "tile_packed_to_4d" in text
