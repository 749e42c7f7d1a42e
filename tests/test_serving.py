"""Serving under load: traces (arrivals, lengths, equal issue), the SLO rate search on a synthetic server (no
timing), and a scheduler that decodes only the slots in use."""

from __future__ import annotations

import statistics

import pytest
import torch
from harness_plugins.continuous_batching import ContinuousBatching, ContinuousBatchingParams, make_trace

from harness import serving
from harness.errors import InputError
from harness.inference import GenerateSpec, GenerateWorkload
from harness.optimization import ParamError, build_params
from harness.workload import RunContext


def test_arrivals_have_the_asked_rate_and_burstiness():
    gaps = lambda times: [b - a for a, b in zip([0.0] + times, times)]  # noqa: E731
    poisson = gaps(serving.arrival_times(20000, 10.0, 1.0, seed=3))
    bursty = gaps(serving.arrival_times(20000, 10.0, 0.25, seed=3))
    for g in (poisson, bursty):
        assert statistics.mean(g) == pytest.approx(0.1, rel=0.03)  # the mean rate whatever the burstiness
    cv = lambda g: statistics.stdev(g) / statistics.mean(g)  # noqa: E731
    assert cv(poisson) == pytest.approx(1.0, rel=0.05) and cv(bursty) == pytest.approx(2.0, rel=0.08)  # 1/sqrt(k)
    assert serving.arrival_times(5, float("inf")) == [0.0] * 5
    assert serving.arrival_times(50, 3.0, seed=1) == serving.arrival_times(50, 3.0, seed=1)


def test_lengths_files_in_jsonl_and_csv_and_their_errors(tmp_path):
    jsonl = tmp_path / "l.jsonl"
    jsonl.write_text('{"prompt_len": 12, "output_len": 30}\n\n{"prompt_len": 7, "output_len": 1}\n')
    csv = tmp_path / "l.csv"
    csv.write_text("prompt_len,output_len\n12,30\n7,1\n")
    assert serving.read_lengths(jsonl) == serving.read_lengths(csv) == [(12, 30), (7, 1)]
    csv.write_text("prompt_len,output_len\n12,30\n7,zero\n")
    with pytest.raises(InputError) as err:
        serving.read_lengths(csv)
    assert (err.value.line, err.value.field) == (3, "output_len")
    with pytest.raises(ParamError) as err:
        build_params(ContinuousBatchingParams, {"lengths_file": str(tmp_path / "missing.jsonl")})
    assert err.value.field == "lengths_file"


def test_too_few_requests_for_a_percentile_are_flagged():
    assert serving.too_few_for(99, 0.99) and not serving.too_few_for(100, 0.99)
    assert serving.too_few_for(9, 0.9) and not serving.too_few_for(10, 0.9)
    assert not serving.too_few_for(2, 0.5)


def p99_latency(rate: float, capacity: float = 50.0, base: float = 0.01) -> float:
    """A synthetic server: latency grows as 1 / (1 - utilisation), unbounded at capacity."""
    return base / (1 - rate / capacity) if rate < capacity else float("inf")


@pytest.mark.parametrize("slo, start", [(0.02, 1.0), (0.05, 200.0), (0.011, 5.0)])
def test_sustainable_rate_search_finds_a_known_threshold(slo, start):
    threshold = 50.0 * (1 - 0.01 / slo)  # p99_latency(r) <= slo  <=>  r <= threshold
    probed = []

    def meets(rate: float) -> bool:
        probed.append(rate)
        return p99_latency(rate) <= slo

    found = serving.sustainable_rate(meets, start, rel_tol=0.05)
    assert found["complete"] and found["stopped"] == "bracketed"
    assert found["rate"] <= threshold < found["failing"] <= found["rate"] * 1.05
    assert len(probed) <= 20


def test_sustainable_rate_search_reports_what_it_established_when_time_runs_out():
    ticks = iter(range(100))
    found = serving.sustainable_rate(lambda r: p99_latency(r) <= 0.02, 1.0, deadline=3, clock=lambda: next(ticks))
    assert found == {"rate": 4.0, "failing": None, "complete": False, "stopped": "time budget spent"}
    assert serving.sustainable_rate(lambda r: False, 1.0)["stopped"] == "lower limit"


CTX = RunContext(device=torch.device("cpu"), env={}, seed=0)
SPEC = GenerateSpec(model="nano", prompts="synthetic", prompt_len=8, new_tokens=8)
TRACE = {"requests": 5, "slots": 4, "prompt_min": 4, "prompt_max": 12, "output_min": 2, "output_max": 9}


def served(**params):
    opt = ContinuousBatching(build_params(ContinuousBatchingParams, {**TRACE, **params}))
    run = GenerateWorkload().build(SPEC, [opt], CTX)
    out = run.outputs()
    run.timed = True
    run.step()
    return opt, run, out


def test_both_schedulers_get_the_same_trace():
    a = make_trace(build_params(ContinuousBatchingParams, {**TRACE, "arrivals": "gamma", "burstiness": 0.5}), 0,
                   True, 256)
    b = make_trace(build_params(ContinuousBatchingParams, {**TRACE, "arrivals": "gamma", "burstiness": 0.5,
                                                           "scheduler": "static"}), 0, True, 256)
    assert [(r.id, r.arrival, r.prompt.tolist(), r.out_len) for r in a] == \
        [(r.id, r.arrival, r.prompt.tolist(), r.out_len) for r in b]


def test_idle_slots_are_not_decoded():
    """Offline: all 5 requests at t = 0 on 4 slots. Each decode iteration decodes only the slots in use, so the
    rows decoded are exactly the tokens after each request's first (which its prefill gives)."""
    opt, run, out = served(arrivals="offline")
    server = run.server
    assert server.decode_rows == sum(r.out_len - 1 for r in server.trace)
    assert server.decode_rows < server.decode_steps * 4  # some iterations ran with idle slots, not decoded
    assert all(c.passed for c in opt.check({}, out)), opt.check({}, out)


def test_a_concurrency_cap_of_one_serves_one_request_at_a_time():
    opt, run, out = served(arrivals="offline", max_concurrency=1)
    server = run.server
    assert server.decode_rows == server.decode_steps  # never two slots in use
    ttfts = [r["ttft"] for r in server.records]
    assert max(ttfts) < 0.5 * sum(r["e2e"] for r in server.records)  # TTFT counts from when it was sent
    assert all(c.passed for c in opt.check({}, out))


def test_a_token_budget_admits_one_prompt_per_iteration_and_outputs_stay_equal():
    opt, run, out = served(arrivals="offline", max_batched_tokens=4)
    assert all(c.passed for c in opt.check({}, out))
    assert run.server.decode_rows == sum(r.out_len - 1 for r in run.server.trace)


SERVING_SUITE = """\
name: serve
device: cpu
measure: {min_pairs: 5, block_s: 0.02, min_samples: 5, min_time_s: 0.1, max_time_s: 1, warmup_max_s: 0.2}
workloads:
  gen: {type: generate, model: nano, prompts: synthetic, prompt_len: 8, new_tokens: 8}
cases:
  - workload: gen
    plugins: [{continuous_batching: {requests: 10, rate: 50.0, slots: 4, prompt_max: 16, output_max: 12}}]
    baseline: [{continuous_batching: {requests: 10, rate: 50.0, slots: 4, prompt_max: 16, output_max: 12,
                                      scheduler: static}}]
    serving: {slo: {ttft_p90_s: 0.05, tpot_p50_s: 0.02}, start_rate: 50, rel_tol: 1.0, max_time_s: 20,
              min_duration_s: 0.1}
"""


@pytest.mark.slow
def test_a_serving_search_runs_each_probe_in_a_fresh_process_and_is_reported(tmp_path):
    import json

    from tests.conftest import harness_cli

    path = tmp_path / "serve.yaml"
    path.write_text(SERVING_SUITE)
    proc = harness_cli("run", path, "--out", tmp_path / "out", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "results.json").read_text())["cases"][0]["serving"]
    assert set(record["sides"]) == {"baseline", "optimized"}
    for side in record["sides"].values():
        points = side["points"]
        # at least the trace's 10 requests, more where rate x min_duration_s asks for more
        assert points and all(p["status"] == "ok" and p["metrics"]["requests_served"] == max(10, -(-p["rate"] // 10))
                              for p in points)
        assert all(p["too_few_requests"] == [] for p in points)
        met = [p["rate"] for p in points if p["meets_slo"]]
        assert side["rate"] == (max(met) if met else None)
        assert all(r < side["failing"] for r in met) if side["failing"] else True
        assert side["offline"] is None or side["offline"]["rate"] is None
    assert "sustainable rate at the SLO" in proc.stderr
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Serving under load: the highest rate within the SLO" in page


def test_a_probe_that_fails_or_cannot_run_ends_the_search():
    spec = build_params(serving.ServingSpec, {"slo": {"tpot_p90_s": 0.01}, "start_rate": 8.0})
    calls = []

    def probe(rate):
        calls.append(rate)
        if rate < 8:
            return {"status": "skipped", "error": "too slow to arrive"}
        return {"status": "ok", "metrics": {"tpot_p90_s": 0.05, "requests_served": 100}}

    side = serving.search_side(spec, probe, deadline=float("inf"))
    assert calls == [8.0, 4.0]  # no halving down to the lower limit, no offline point after a failure
    assert side["rate"] is None and not side["complete"] and side["offline"] is None
    assert side["stopped"] == "probe at 4 req/s skipped: too slow to arrive"
