"""The generate workload: no-cache baseline vs cached decode, metrics, spec validation, registration."""

import time

import pytest
import torch

from harness.core.checks import compare_tokens
from harness.core.optimization import ParamError, build_params
from harness.core.workload import RunContext
from harness.models.accounting import regime, weight_bytes
from harness.models.gpt import GPT, ModelArgs, kv_cache_bytes
from harness.workloads.generate import GenerateSpec, GenerateWorkload

CTX = RunContext(device=torch.device("cpu"), env={"peak": None}, seed=0)


def build(**spec):
    return GenerateWorkload().build(GenerateSpec(**{"model": "nano", "prompts": "synthetic", **spec}), [], CTX)


def test_every_cache_kind_gives_the_no_cache_tokens():
    run = build(batch=2, prompt_len=16, new_tokens=12)
    expected = run.outputs()["tokens"]
    assert expected.shape == (2, 12) and run.last_cache is None
    for kind in ("dynamic", "static"):
        run.knobs.cache_kind = kind
        out = run.outputs()
        assert torch.equal(out["tokens"], expected), kind
        assert out["kv_cache"]["measured"] == out["kv_cache"]["formula"]


def test_generated_tokens_continue_the_prompt_greedily():
    run = build(batch=1, prompt_len=8, new_tokens=3)
    tokens = run.outputs()["tokens"]
    with torch.no_grad():
        first = run.model(run.prompts)[:, -1].argmax(-1)
    assert tokens[0, 0] == first[0]


def test_units_and_metrics():
    run = build(batch=2, prompt_len=8, new_tokens=5)
    run.knobs.cache_kind = "static"
    run.outputs()
    assert run.units == {"tokens": 10, "sequences": 2}
    m = run.extra_metrics(0.5)
    assert m["tokens_per_s_total"] == pytest.approx(20.0)
    assert m["tpot_s"] == pytest.approx((0.5 - m["ttft_s"]) / 4)
    assert m["kv_bytes_measured"] == m["kv_bytes_formula"] == kv_cache_bytes(run.model.args, 2, 13, 4)
    assert m["mbu"] is None and m["regime"] is None  # CPU / unknown peak: never guessed
    assert m["weight_bytes"] == weight_bytes(run.model)
    assert m["itl_gaps"] == 4 and 0 < m["itl_p50_s"] <= m["itl_p90_s"] <= m["itl_max_s"] and "itl_p99_s" not in m
    assert run.kv_bytes()["measured"] == m["kv_bytes_measured"]  # the extra generates leave the cache facts alone


def test_itl_gaps_are_within_sequences_and_show_a_stall():
    run = build(batch=2, prompt_len=8, new_tokens=6)
    run.knobs.layout = "sequential"
    decode, calls = run.knobs.decode, []

    def stalled(*args):  # the 3rd decode step of every sequence stalls for 50 ms
        calls.append(1)
        if len(calls) % 5 == 3:
            time.sleep(0.05)
        return decode(*args)

    run.knobs.cache_kind, run.knobs.decode = "dynamic", stalled
    m = run.inter_token_latencies()
    assert m["itl_gaps"] == 2 * 5  # 5 gaps per sequence, none across the two sequences
    assert m["itl_max_s"] >= 0.05 > m["itl_p50_s"]


def test_sequential_layout_gives_same_tokens_and_per_sequence_latency():
    run = build(batch=3, prompt_len=8, new_tokens=4)
    batched = run.outputs()["tokens"]
    run.knobs.layout = "sequential"
    assert torch.equal(run.outputs()["tokens"], batched)
    assert run.extra_metrics(0.3)["tokens_per_s_per_seq"] == pytest.approx(4 / 0.1)


def test_sampling_is_seeded():
    a = build(batch=2, prompt_len=8, new_tokens=10, sampling="sample", top_k=20).outputs()["tokens"]
    b = build(batch=2, prompt_len=8, new_tokens=10, sampling="sample", top_k=20).outputs()["tokens"]
    assert torch.equal(a, b)


def test_weight_bytes_excludes_embeddings():
    model = GPT(ModelArgs.from_name("nano"))
    total = sum(p.numel() * 4 for p in model.parameters())
    emb = (model.wte.weight.numel() + model.wpe.weight.numel()) * 4
    assert weight_bytes(model) == total - emb


def test_compare_tokens_reports_first_mismatch():
    a = torch.zeros(2, 5, dtype=torch.long)
    b = a.clone()
    b[1, 3] = 7
    check = compare_tokens("x", a, b)
    assert not check.passed and check.values["first_mismatch"] == [1, 3] and check.values["mismatches"] == 1
    assert compare_tokens("x", a, a.clone()).passed


def test_regime_thresholds():
    assert regime(0.045) == "launch-bound" and regime(0.6) == "bandwidth-bound" and regime(0.2) == "mixed"
    assert regime(None) is None


@pytest.mark.parametrize("values, field", [
    ({"batch": 0}, "batch"), ({"new_tokens": 0}, "new_tokens"), ({"temperature": 0.0}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"prompt_len": 200, "new_tokens": 100}, "new_tokens"), ({"dtype": "int3"}, "dtype"),
])
def test_spec_validation(values, field):
    with pytest.raises(ParamError) as err:
        build_params(GenerateSpec, values)
    assert err.value.field == field


def test_registered_as_inference_workload():
    from harness.core.plugins import load_registry

    registry = load_registry()
    assert registry.workloads["generate"] is GenerateWorkload and GenerateWorkload.kind == "inference"
    for name in ("kv_cache", "quantization", "speculative_decoding", "batching", "continuous_batching",
                 "distillation"):
        assert registry.optimizations[name].kind == "inference", name


def test_compare_tokens_allows_divergence_only_at_a_near_tie():
    expected = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    got = torch.tensor([[5, 9, 0, 0], [1, 2, 3, 4]])  # row 0 takes 9 instead of 6, then goes its own way
    ties = torch.full((2, 4, 4), -1)
    ties[..., 0] = expected
    assert not compare_tokens("x", expected, got, ties).passed  # 9 was not within tolerance of 6
    ties[0, 1, 1] = 9  # 9 was a near-tie of 6 on the baseline
    check = compare_tokens("x", expected, got, ties)
    assert check.passed and check.values["sequences_diverging_at_near_ties"] == 1
    assert check.values["positions_excused"] == 3 and check.values["near_tie_positions"] == 1
    got[1, 0] = 3  # a second row diverging at a non-tie fails the whole check
    assert not compare_tokens("x", expected, got, ties).passed


def test_ties_list_the_greedy_token_first_and_only_close_logits():
    run = build(batch=2, prompt_len=8, new_tokens=6)
    out = run.outputs()
    ties = out["ties"]
    assert ties.shape == (2, 6, 4) and torch.equal(ties[..., 0], out["tokens"])
    assert bool(((ties[..., 1:] == -1) | (ties[..., 1:] != ties[..., :1])).all())
    assert build(batch=1, prompt_len=8, new_tokens=4, sampling="sample").outputs()["ties"] is None


def test_kv_bytes_moved_per_decode_step_follow_the_cache_kind():
    """static: the whole max_len cache is read every step; dynamic: torch.cat reads L, writes L + 1, attention
    reads L + 1, at the mean length; one sequence's worth when rows run one at a time."""
    from harness.models.accounting import kv_step_bytes

    args = ModelArgs.from_name("nano")
    per_position = kv_cache_bytes(args, 4, 1, 4)
    assert kv_step_bytes(args, 4, "static", 16, 10, 4) == 26 * per_position
    assert kv_step_bytes(args, 4, "dynamic", 16, 10, 4) == (3 * (16 + 4) + 2) * per_position
    assert kv_step_bytes(args, 4, "none", 16, 10, 4) == 0
    build = lambda kind: GenerateWorkload().build(  # noqa: E731
        GenerateSpec(model="nano", batch=2, prompt_len=8, new_tokens=6, prompts="synthetic"), [], CTX)
    run = build("static")
    run.knobs.cache_kind = "static"
    run.outputs()
    m = run.extra_metrics(0.05)
    assert m["kv_bytes_per_decode_step"] == kv_step_bytes(run.model.args, 2, "static", 8, 6, 4)
    assert m["achieved_bandwidth_bytes_s"] == pytest.approx((m["weight_bytes"] + m["kv_bytes_per_decode_step"])
                                                            / m["tpot_s"])


def test_first_generate_is_the_first_call():
    run = build(batch=1, prompt_len=8, new_tokens=4)
    assert run.first_call_s is None
    run.outputs()
    first = run.first_call_s
    assert first > 0
    run.outputs()  # later work does not move it
    assert run.first_call_s == first


def test_near_tie_band_is_the_measured_noise_not_a_fixed_share_of_the_logits():
    """A runner-up 3e-3 below the greedy token is a tie when computing the logits in a batch of two moves them by
    1e-3 (band 4 x noise), and not when it does not move them (band 2 eps x max|logit| = 2.4e-6)."""
    from torch import nn

    from harness.core.checks import near_ties

    class Logits(nn.Module):
        def __init__(self, noise: float):
            super().__init__()
            self.noise = noise

        def forward(self, idx):
            B, T = idx.shape
            out = torch.zeros(B, T, 8)
            out[..., 0], out[..., 1] = 10.0, 10.0 - 3e-3
            out[0, :, 0] += self.noise * (B == 2)  # the batch-of-two kernel rounds differently
            return out

    prompt, tokens = torch.tensor([3, 4]), torch.zeros(3, dtype=torch.long)
    assert near_ties(Logits(1e-3), prompt, tokens, torch.float32)[:, :2].tolist() == [[0, 1]] * 3
    assert near_ties(Logits(0.0), prompt, tokens, torch.float32)[:, :2].tolist() == [[0, -1]] * 3


def test_decode_figures_bandwidth_and_itl_follow_their_definitions():
    """The metric formulas of docs/measurement.md on numbers worked by hand (no model, no timing)."""
    from harness.core.stats import itl_percentiles
    from harness.models.accounting import bandwidth_figures, decode_figures

    together = decode_figures(2.0, 0.2, new_tokens=10, batch=4, sequential=False)
    assert together["tpot_s"] == pytest.approx(0.2) and together["tokens_per_s_total"] == pytest.approx(20.0)
    assert together["tokens_per_s_per_seq"] == pytest.approx(5.0)
    one_by_one = decode_figures(2.0, 0.2, new_tokens=10, batch=4, sequential=True)  # each sequence took 0.5 s
    assert one_by_one["tpot_s"] == pytest.approx(0.3 / 9) and one_by_one["tokens_per_s_per_seq"] == pytest.approx(20)
    assert decode_figures(1.0, 0.5, new_tokens=1, batch=1, sequential=False)["tpot_s"] is None
    moved = bandwidth_figures(1000, 200, tpot_s=0.001, peak_bandwidth=2e6)
    assert moved["achieved_bandwidth_bytes_s"] == pytest.approx(1.2e6) and moved["mbu"] == pytest.approx(0.6)
    assert moved["regime"] == "bandwidth-bound"
    assert bandwidth_figures(1000, 0, 0.001, None)["mbu"] is None  # peak unknown (a CPU): no MBU, no regime
    itl = itl_percentiles([[0.0, 1.0, 3.0], [10.0, 10.5], [7.0]])  # gaps 1, 2 and 0.5; one token: no gap
    assert (itl["itl_p50_s"], itl["itl_max_s"], itl["itl_gaps"]) == (1.0, 2.0, 3) and "itl_p99_s" not in itl
    assert itl_percentiles([[1.0]]) == {}
