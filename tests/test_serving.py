"""Serving under load: traces (arrivals, lengths, equal issue), the SLO rate search on a synthetic server (no
timing), and a scheduler that decodes only the slots in use."""

from __future__ import annotations

import statistics

import pytest
import torch
from harness_plugins.continuous_batching import ContinuousBatching

from harness.core.errors import InputError
from harness.core.optimization import ParamError, build_params
from harness.core.workload import RunContext
from harness.workloads.serve import ServeSpec, ServeWorkload
from harness.workloads.serve import search as serving
from harness.workloads.serve import trace as traces
from harness.workloads.serve.trace import make_trace


def test_arrivals_have_the_asked_rate_and_burstiness():
    gaps = lambda times: [b - a for a, b in zip([0.0] + times, times)]  # noqa: E731
    poisson = gaps(traces.arrival_times(20000, 10.0, 1.0, seed=3))
    bursty = gaps(traces.arrival_times(20000, 10.0, 0.25, seed=3))
    for g in (poisson, bursty):
        assert statistics.mean(g) == pytest.approx(0.1, rel=0.03)  # the mean rate whatever the burstiness
    cv = lambda g: statistics.stdev(g) / statistics.mean(g)  # noqa: E731
    assert cv(poisson) == pytest.approx(1.0, rel=0.05) and cv(bursty) == pytest.approx(2.0, rel=0.08)  # 1/sqrt(k)
    assert traces.arrival_times(5, float("inf")) == [0.0] * 5
    assert traces.arrival_times(50, 3.0, seed=1) == traces.arrival_times(50, 3.0, seed=1)


def test_lengths_files_in_jsonl_and_csv_and_their_errors(tmp_path):
    jsonl = tmp_path / "l.jsonl"
    jsonl.write_text('{"prompt_len": 12, "output_len": 30}\n\n{"prompt_len": 7, "output_len": 1}\n')
    csv = tmp_path / "l.csv"
    csv.write_text("prompt_len,output_len\n12,30\n7,1\n")
    assert traces.read_lengths(jsonl) == traces.read_lengths(csv) == [(12, 30), (7, 1)]
    csv.write_text("prompt_len,output_len\n12,30\n7,zero\n")
    with pytest.raises(InputError) as err:
        traces.read_lengths(csv)
    assert (err.value.line, err.value.field) == (3, "output_len")
    with pytest.raises(ParamError) as err:
        build_params(ServeSpec, {"lengths_file": str(tmp_path / "missing.jsonl")})
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
TRACE = {"model": "nano", "prompts": "synthetic", "requests": 5, "slots": 4, "prompt_min": 4, "prompt_max": 12,
         "output_min": 2, "output_max": 9}


def served(**values):
    """A continuous_batching side built on the trace, its outputs, then one timed serve."""
    opt = ContinuousBatching()
    run = ServeWorkload().build(build_params(ServeSpec, {**TRACE, **values}), [opt], CTX)
    out = run.outputs()
    run.timed = True
    run.step()
    return opt, run, out


def test_both_schedulers_get_the_same_trace():
    spec = build_params(ServeSpec, {**TRACE, "arrivals": "gamma", "burstiness": 0.5})
    a, b = (ServeWorkload().build(spec, plugins, CTX).trace for plugins in ([], [ContinuousBatching()]))
    assert [(r.id, r.arrival, r.prompt.tolist(), r.out_len) for r in a] == \
        [(r.id, r.arrival, r.prompt.tolist(), r.out_len) for r in b]
    assert [r.arrival for r in make_trace(spec, 1, 256)] != [r.arrival for r in a]  # another seed, another trace


def test_idle_slots_are_not_decoded():
    """Offline: all 5 requests at t = 0 on 4 slots. Each decode iteration decodes only the slots in use, so the
    rows decoded are exactly the tokens after each request's first (which its prefill gives)."""
    opt, run, out = served(arrivals="offline")
    server = run
    assert server.decode_rows == sum(r.out_len - 1 for r in server.trace)
    assert server.decode_rows < server.decode_steps * 4  # some iterations ran with idle slots, not decoded
    assert all(c.passed for c in opt.check({}, out)), opt.check({}, out)


def test_a_concurrency_cap_of_one_serves_one_request_at_a_time():
    opt, run, out = served(arrivals="offline", max_concurrency=1)
    server = run
    assert server.decode_rows == server.decode_steps  # never two slots in use
    ttfts = [r["ttft"] for r in server.records]
    assert max(ttfts) < 0.5 * sum(r["e2e"] for r in server.records)  # TTFT counts from when it was sent
    assert all(c.passed for c in opt.check({}, out))


def test_a_token_budget_admits_one_prompt_per_iteration_and_outputs_stay_equal():
    opt, run, out = served(arrivals="offline", max_batched_tokens=4)
    assert all(c.passed for c in opt.check({}, out))
    assert run.decode_rows == sum(r.out_len - 1 for r in run.trace)


SERVING_SUITE = """\
name: serve
device: cpu
measure: {min_pairs: 5, block_s: 0.02, min_samples: 5, min_time_s: 0.1, max_time_s: 1, warmup_max_s: 0.2}
workloads:
  srv: {type: serve, model: nano, prompts: synthetic, requests: 10, rate: 50.0, slots: 4, prompt_max: 16,
        output_max: 12}
cases:
  - workload: srv
    plugins: [continuous_batching]
    serving: {slo: {ttft_p90_s: 0.05, tpot_p50_s: 0.02}, start_rate: 50, rel_tol: 1.0, max_time_s: 16,
              min_duration_s: 0.1, repeats: 1}
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
        assert side["repeats"] == 1
        probed = side["searches"][0]["points"]
        # a probe the time left cannot hold is skipped and ends the search: only the last one may be
        assert probed and all(p["status"] == "ok" for p in probed[:-1]) and probed[-1]["status"] in ("ok", "skipped")
        points = [p for p in probed if p["status"] == "ok"]
        # at least the trace's 10 requests, more where rate x min_duration_s asks for more
        assert points and all(p["metrics"]["requests_served"] == max(10, -(-p["rate"] // 10)) for p in points)
        assert all(p["too_few_requests"] == [] for p in points)
        met = [p["rate"] for p in points if p["meets_slo"]]
        assert side["rate"] == (max(met) if met else None)
        failing = side["searches"][0]["failing"]
        assert all(r < failing for r in met) if failing else True
        assert side["searches"][0]["offline"] is None or side["searches"][0]["offline"]["rate"] is None
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


def synthetic_server(capacity: dict[str, float], saturated: dict[str, list[float]]):
    """probe(side, rate, deadline) for a server whose p90 TTFT is p99_latency at that side's capacity; the
    offline point's throughput per repeat from `saturated`; records every call."""
    calls = []

    def probe(side, rate, deadline):
        calls.append((side, rate))
        if rate == float("inf"):
            n = sum(1 for s, r in calls if s == side and r == rate) - 1
            return {"status": "ok", "metrics": {"tokens_per_s_total": saturated[side][n], "requests_served": 100,
                                                "requests_per_s": saturated[side][n] / 10, "ttft_p90_s": 1.0}}
        return {"status": "ok", "metrics": {"ttft_p90_s": p99_latency(rate, capacity[side]), "requests_served": 100,
                                            "requests_per_s": min(rate, capacity[side]),
                                            "goodput_requests_per_s": min(rate, capacity[side]) / 2}}
    return probe, calls


def test_repeated_searches_alternate_the_sides_and_give_medians_with_their_spread():
    spec = build_params(serving.ServingSpec, {"slo": {"ttft_p90_s": 0.02}, "start_rate": 4.0, "rel_tol": 0.05,
                                              "repeats": 3})
    probe, calls = synthetic_server({"baseline": 20.0, "optimized": 50.0},
                                    {"baseline": [100.0, 110.0, 90.0], "optimized": [200.0, 240.0, 225.0]})
    record = serving.serve_searches(spec, probe)
    # thresholds: p99_latency(r, c) <= 0.02  <=>  r <= c / 2
    offline_at = [i for i, (_, r) in enumerate(calls) if r == float("inf")]
    assert [calls[i][0] for i in offline_at] == ["baseline", "optimized"] * 3  # each search ends offline, alternating
    for side, threshold in (("baseline", 10.0), ("optimized", 25.0)):
        found = record["sides"][side]
        assert [s["complete"] for s in found["searches"]] == [True] * 3 and found["found"] == 3
        assert all(s["rate"] <= threshold < s["failing"] <= s["rate"] * 1.05 for s in found["searches"])
        assert found["rate_range"][0] <= found["rate"] <= found["rate_range"][1]
        # a later search starts at the last answer: fewer probes than the first
        first, *later = [len(s["points"]) for s in found["searches"]]
        assert all(n < first for n in later)
    assert record["rate_ratio"] == pytest.approx(2.5, rel=0.1) and record["ratio_repeats"] == 3
    # saturated ratio paired per repeat: 200/100, 240/110, 225/90 -> median 2.18, range [2, 2.5]
    assert record["saturation_ratio"] == pytest.approx(240 / 110)
    assert record["saturation_ratio_range"] == pytest.approx([2.0, 2.5])
    assert record["sides"]["optimized"]["saturated_tokens_per_s"] == 225.0
    text = serving.headline(record)
    assert "3 repeats" in text and "saturated throughput 2.18x [2-2.5]" in text


def test_a_later_search_starts_near_the_last_answer_on_another_grid():
    spec = build_params(serving.ServingSpec, {"slo": {"ttft_p90_s": 0.02}, "start_rate": 1.0, "rel_tol": 0.05,
                                              "repeats": 2})
    probe, calls = synthetic_server({"baseline": 20.0, "optimized": 20.0},
                                    {"baseline": [1.0, 1.0], "optimized": [1.0, 1.0]})
    record = serving.serve_searches(spec, probe)
    first = record["sides"]["baseline"]["searches"][0]["rate"]
    second_start = [r for s, r in calls if s == "baseline" and r != float("inf")][len(
        record["sides"]["baseline"]["searches"][0]["points"])]
    assert second_start == pytest.approx(first * 1.05 ** (1 / 2))  # its grid moved by half a rel_tol step


def test_an_auto_sweep_serves_both_sides_from_light_load_to_past_saturation():
    spec = build_params(serving.ServingSpec, {"slo": {"ttft_p90_s": 0.02}, "start_rate": 4.0, "repeats": 1,
                                              "rates": "auto"})
    probe, calls = synthetic_server({"baseline": 20.0, "optimized": 50.0},
                                    {"baseline": [100.0], "optimized": [400.0]})
    record = serving.serve_searches(spec, probe)
    top = 40.0  # the faster side's saturated requests/s
    assert record["sweep"]["rates"] == [f * top for f in serving.AUTO_FRACTIONS]
    swept = calls[-2 * len(serving.AUTO_FRACTIONS):]
    assert swept == [(side, f * top) for f in serving.AUTO_FRACTIONS for side in ("baseline", "optimized")]
    goodput = [p["metrics"]["goodput_requests_per_s"] for p in record["sweep"]["points"]["baseline"]]
    assert goodput == [min(f * top, 20.0) / 2 for f in serving.AUTO_FRACTIONS]
    listed = build_params(serving.ServingSpec, {"slo": {"ttft_p90_s": 0.02}, "repeats": 1, "rates": [3, 6]})
    assert serving.serve_searches(listed, synthetic_server({"baseline": 20.0, "optimized": 50.0},
                                                           {"baseline": [1.0], "optimized": [1.0]})[0]
                                  )["sweep"]["rates"] == [3, 6]


@pytest.mark.parametrize("field, value", [("rates", "fast"), ("rates", []), ("rates", [1, -2]), ("repeats", 0)])
def test_bad_serving_blocks_name_their_field(field, value):
    with pytest.raises(ParamError) as err:
        build_params(serving.ServingSpec, {"slo": {"ttft_p90_s": 0.02}, field: value})
    assert err.value.field == field


def test_a_record_written_before_repeats_still_reads():
    old = {"rate": 10.4, "failing": 11.3, "points": [], "offline": {"metrics": {"tokens_per_s_total": 438.0}}}
    assert serving.searches_of(old) == [old]
    record = serving.summarize(build_params(serving.ServingSpec, {"slo": {"ttft_p90_s": 0.5}}),
                               {"baseline": old, "optimized": {**old, "rate": 14.7, "failing": 16.0,
                                                               "offline": {"metrics": {"tokens_per_s_total": 760.0}}}})
    assert record["rate_ratio"] == pytest.approx(14.7 / 10.4)
    # the ratio's range is what the brackets allow: 14.7 / 11.3 to 16 / 10.4
    assert serving.headline(record) == ("sustainable rate at the SLO: 10.4 → 14.7 req/s (1.41x [1.3-1.54]); "
                                        "saturated throughput 1.74x")


def test_the_report_shows_every_search_and_the_sweep():
    import json
    from pathlib import Path

    from harness.report.page import render_report

    spec = build_params(serving.ServingSpec, {"slo": {"ttft_p90_s": 0.02}, "start_rate": 4.0, "repeats": 2,
                                              "rates": "auto"})
    probe, _ = synthetic_server({"baseline": 20.0, "optimized": 50.0},
                                {"baseline": [100.0, 90.0], "optimized": [400.0, 380.0]})
    reference = Path(__file__).parent.parent / "reports/reference/epyc-2core-serving/results.json"
    results = json.loads(reference.read_text())
    results["cases"][0]["serving"] = serving.serve_searches(spec, probe)
    page = render_report(results)
    assert "optimized search 2: sustainable" in page and "baseline search 1: sustainable" in page
    assert "Sweep: both sides at each offered rate" in page and "offered rate (requests/s)" in page
    assert "2 repeats" in page


def test_probes_on_a_busy_machine_are_counted_and_said():
    spec = build_params(serving.ServingSpec, {"slo": {"ttft_p90_s": 0.02}, "start_rate": 4.0, "repeats": 1})
    probe, _ = synthetic_server({"baseline": 20.0, "optimized": 50.0}, {"baseline": [1.0], "optimized": [2.0]})

    def loaded(side, rate, deadline):  # a neighbour takes 40 % of the machine during the optimized side's probes
        out = probe(side, rate, deadline)
        out["metrics"]["foreign_cpu"] = 0.4 if side == "optimized" else 0.0
        return out

    record = serving.serve_searches(spec, loaded)
    busy = record["sides"]["optimized"]["busy_probes"]
    assert record["sides"]["baseline"]["busy_probes"] == 0 and busy == len(
        record["sides"]["optimized"]["searches"][0]["points"]) + 1  # every point and the offline one
    assert serving.headline(record).endswith(f"; {busy} probe(s) on a busy machine")


def test_old_style_trace_parameters_say_where_the_trace_moved():
    from harness_plugins.continuous_batching import ContinuousBatchingParams

    with pytest.raises(ParamError) as err:
        build_params(ContinuousBatchingParams, {"requests": 16})
    assert "unknown parameter 'requests'" in str(err.value) and "fields of the `serve` workload" in str(err.value)


def test_a_serve_run_counts_embeddings_and_its_slot_cache_and_refuses_generate_plugins():
    from harness.core.plugins import load_registry
    from harness.core.sides import build_sides
    from harness.models.accounting import tensor_bytes

    run = ServeWorkload().build(build_params(ServeSpec, TRACE), [], CTX)
    memory = run.memory()
    assert memory["weights"] == tensor_bytes(run.model.parameters())  # wte, wpe and the untied head included
    assert memory["kv_cache"] == run.cache.nbytes() == 2 * run.cache.k.numel() * 4
    registry = load_registry()
    with pytest.raises(ValueError, match="'kv_cache' applies to GenerateAPI runs, but 'serve' .type: serve. runs "
                                         "ServeRun"):
        build_sides(registry, {"optimized": [("kv_cache", {})]}, {}, ServeWorkload)
    assert build_sides(registry, {"optimized": [("continuous_batching", {})]}, {}, ServeWorkload)["optimized"]


def test_a_prompt_prefilled_in_chunks_gives_the_logits_of_a_whole_prefill():
    """Each chunk attends to the slot's earlier chunks (causally among its own tokens): the last logits of a
    prompt prefilled as 10 + 7 + 1 tokens equal those of one whole prefill into another slot."""
    run = ServeWorkload().build(build_params(ServeSpec, TRACE), [], CTX)
    prompt = torch.randint(0, 256, (18,), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        whole = run.prefill(0, prompt, 0)[0, -1]
        run.prefill(1, prompt[:10], 0), run.prefill(1, prompt[10:17], 10)
        chunked = run.prefill(1, prompt[17:], 17)[0, -1]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(run.cache.k[:, 1, :, :18], run.cache.k[:, 0, :, :18], rtol=1e-5, atol=1e-5)


def test_chunked_prefill_runs_decodes_between_the_chunks_of_a_long_prompt(tmp_path, monkeypatch):
    """Offline, two slots: a short request and a 30-token prompt. With chunks of 8 tokens the long prompt is
    prefilled over several iterations, each chunk at most 8 tokens at contiguous positions, with the short
    request's decode steps between them; every output still equals the request served alone."""
    from harness_plugins.chunked_prefill import ChunkedPrefill, ChunkedPrefillParams

    from harness.workloads.serve import ServeRun

    lengths = tmp_path / "lengths.jsonl"
    lengths.write_text('{"prompt_len": 4, "output_len": 12}\n{"prompt_len": 30, "output_len": 4}\n')
    calls = []
    prefill = ServeRun.prefill

    def logged(self, slot, chunk, start):
        calls.append((self.knobs.prefill_chunk is not None, slot, start, chunk.size(0), self.decode_steps))
        return prefill(self, slot, chunk, start)

    monkeypatch.setattr(ServeRun, "prefill", logged)
    spec = build_params(ServeSpec, {**TRACE, "requests": 2, "slots": 2, "arrivals": "offline",
                                    "lengths_file": str(lengths)})
    opt = ChunkedPrefill(ChunkedPrefillParams(chunk=8))
    base, run = (ServeWorkload().build(spec, plugins, CTX) for plugins in ([ContinuousBatching()],
                                                                           [ContinuousBatching(), opt]))
    checks = opt.check(base.outputs(), run.outputs())
    assert all(c.passed for c in checks), checks
    calls.clear()
    run.timed = True
    run.step()
    long = [(start, n, steps) for chunked, slot, start, n, steps in calls if chunked and n and slot == 1]
    assert [start for start, _, _ in long] == [0, 4, 12, 20, 28] and [n for _, n, _ in long] == [4, 8, 8, 8, 2]
    assert all(a[2] < b[2] for a, b in zip(long, long[1:]))  # a decode iteration between every two chunks
    assert run.decode_rows == sum(r.out_len - 1 for r in run.trace)  # still only prefilled slots decode


def test_knobs_refuse_a_typo_and_a_value_outside_their_choices():
    """A plugin that misspells a knob or sets a value the run does not know fails its case at apply time,
    instead of leaving the baseline's setting (which would time the baseline against itself)."""
    from harness.workloads.generate import GenerateKnobs
    from harness.workloads.train import TrainKnobs

    run = ServeWorkload().build(build_params(ServeSpec, TRACE), [], CTX)
    with pytest.raises(AttributeError, match="ServeKnobs has no knob 'schedular'; did you mean 'scheduler'"):
        run.knobs.schedular = "continuous"
    with pytest.raises(ValueError, match="ServeKnobs.scheduler must be one of 'static', 'continuous' .got 'fifo'"):
        run.knobs.scheduler = "fifo"
    run.knobs.scheduler, run.knobs.prefill_chunk = "continuous", 16
    with pytest.raises(ValueError, match="cache_kind must be one of 'none', 'dynamic', 'static'"):
        GenerateKnobs().cache_kind = "dynamc"
    knobs = TrainKnobs()
    knobs.sharding = None
    with pytest.raises(ValueError, match="sharding must be one of 'zero1', 'fsdp_grad_op', 'fsdp_full', None"):
        knobs.sharding = "zero3"


def test_a_side_the_budget_never_reached_is_said_not_searched():
    """Each probe takes 12 s of a 10 s budget: the baseline's first probe meets the SLO and spends it all, so the
    optimized side is never probed and no side gets its offline point; the headline says so instead of
    'none' (which would read as: nothing met the SLO), and an unbracketed rate reads as a bound."""
    spec = build_params(serving.ServingSpec, {"slo": {"ttft_p90_s": 0.02}, "start_rate": 4.0, "repeats": 1,
                                              "max_time_s": 10})
    probe, _ = synthetic_server({"baseline": 20.0, "optimized": 50.0}, {"baseline": [1.0], "optimized": [2.0]})
    now = [0.0]

    def slow(side, rate, deadline):
        now[0] += 12.0
        return probe(side, rate, deadline)

    text = serving.headline(serving.serve_searches(spec, slow, clock=lambda: now[0]))
    assert text.startswith("sustainable rate at the SLO: ≥ 4 → not searched (time budget spent) req/s"), text
    assert "saturated throughput not measured for baseline and optimized" in text


def test_a_plain_serve_case_flags_percentiles_over_too_few_requests():
    """36 requests (12 served three times): p99 needs 100, so it is listed in too_few_requests and the headline
    says so; p50 and p90 are not."""
    from harness.report.formatting import fmt_headline

    run = ServeWorkload().build(build_params(ServeSpec, {**TRACE, "requests": 12}), [], CTX)
    run.timed = True
    for _ in range(3):
        run.step()
    extra = run.extra_metrics(0.5)
    assert extra["requests_served"] == 36
    assert set(extra["too_few_requests"]) == {"ttft_p99_s", "tpot_p99_s", "e2e_p99_s"}
    line = fmt_headline({"baseline": {"extra": extra}, "optimized": {"extra": extra}})
    assert "TTFT p99 (too few requests)" in line and "TTFT p50 (too few" not in line


def test_missing_required_settings_and_lengths_columns_are_named():
    with pytest.raises(ParamError) as err:
        build_params(serving.ServingSpec, {"start_rate": 5})
    assert err.value.field == "slo" and "'slo' is required" in str(err.value)


def test_a_lengths_file_without_a_column_says_so(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text("prompt,output\n12,30\n")
    with pytest.raises(InputError) as err:
        traces.read_lengths(csv)
    assert (err.value.line, err.value.field) == (2, "prompt_len") and "has no 'prompt_len' (column" in str(err.value)


def test_a_probe_flags_its_bounded_percentiles_that_had_too_few_requests():
    """The probe's flags are the workload's own (`too_few_requests`, each percentile by its own sample count),
    kept for the SLO's metrics only; a flagged figure still counts toward the SLO, shown, not hidden."""
    metrics = {"ttft_p99_s": 0.1, "tpot_p50_s": 0.01, "too_few_requests": ["ttft_p99_s", "e2e_p99_s"]}
    point = serving.point_record(8.0, {"status": "ok", "metrics": metrics}, {"ttft_p99_s": 0.5, "tpot_p50_s": 0.05})
    assert point["too_few_requests"] == ["ttft_p99_s"] and point["meets_slo"]
