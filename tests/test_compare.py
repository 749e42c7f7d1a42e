"""Comparing runs: alignment by case id, ratios, significance, the --fail-if gate and its error paths."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.core.errors import InputError
from harness.report import compare as cmp
from harness.report import compare_page
from harness.report.export import to_pytest_benchmark

DATA = Path(__file__).parent / "data"
CPU, GPU = DATA / "results-cpu.json", DATA / "results-gpu.json"


def scaled(tmp_path: Path, factor: float, name: str = "later.json") -> Path:
    """The CPU fixture with every optimized-side sample multiplied by `factor` (a regression when > 1)."""
    from harness.core.stats import summarize

    r = json.loads(CPU.read_text())
    for c in r["cases"]:
        if c["status"] == "ok":
            c["metrics"]["latency"] = summarize([x * factor for x in c["metrics"]["latency"]["data"]])
    path = tmp_path / name
    path.write_text(json.dumps(r))
    return path


def row(result, case_id, side):
    return next(r for r in result["rows"] if r["case"] == case_id and r["side"] == side)


def test_different_case_sets_are_listed_not_dropped():
    result = cmp.compare([CPU, GPU])
    cpu_ids = {c["id"] for c in json.loads(CPU.read_text())["cases"]}
    gpu_ids = {c["id"] for c in json.loads(GPU.read_text())["cases"]}
    assert {r["case"] for r in result["rows"]} == cpu_ids | gpu_ids
    assert set(result["partial"]) == cpu_ids ^ gpu_ids
    fused = row(result, "train-nano/fused_adamw", "optimized")
    assert fused["entries"][1]["status"] == "absent" and fused["versus"][1] is None
    graphs = row(result, "decode-nano(batch=1)/cuda_graphs", "optimized")  # unsupported on CPU, ok on GPU
    assert [e["status"] for e in graphs["entries"]] == ["unsupported", "ok"]


def test_ratios_and_significance_across_machines():
    result = cmp.compare([CPU, GPU])
    cpu, gpu = (json.loads(p.read_text()) for p in (CPU, GPU))
    cid = "train-nano/mixed_precision(dtype=bf16)"
    first = next(c for c in cpu["cases"] if c["id"] == cid)["metrics"]
    later = next(c for c in gpu["cases"] if c["id"] == cid)["metrics"]
    v = row(result, cid, "optimized")["versus"][1]
    assert v["time_ratio"] == pytest.approx(later["latency"]["median"] / first["latency"]["median"])
    tps = [side["throughput"]["tokens_per_s"] for side in (first, later)]
    assert v["throughput_ratio"] == pytest.approx(tps[1] / tps[0])
    assert v["memory_ratio"] == pytest.approx(later["memory"]["peak_bytes"] / first["memory"]["peak_bytes"])
    assert v["verdict"] == "faster" and v["ci95"][0] > 1


def test_environment_differences_are_highlighted():
    rows = {e["key"]: e for e in cmp.compare([CPU, GPU])["env_rows"]}
    assert rows["device"]["differs"] and rows["torch"]["differs"]
    assert not rows["python"]["differs"]
    assert not rows["hostname"]["differs"]  # always differs between machines: shown, not highlighted
    html = compare_page.render_compare(cmp.compare([CPU, GPU]))
    assert '<tr class="diff"><td><code>device</code>' in html


def test_same_run_twice_is_no_significant_difference(tmp_path):
    result = cmp.compare([CPU, CPU])
    for r in result["rows"]:
        if r["versus"][1]:
            assert r["versus"][1]["time_ratio"] == pytest.approx(1.0)
            # a noisy case compared with itself may be too wide to call, never faster or slower
            assert r["versus"][1]["verdict"] in ("no significant difference", "inconclusive")
    assert cmp.main([CPU, CPU], fail_if=["median:1%"]) == 0


def test_a_regression_is_slower_and_breaks_the_gate(tmp_path, capsys):
    later = scaled(tmp_path, 1.2)
    v = row(cmp.compare([CPU, later]), "decode-nano(batch=1)/kv_cache", "optimized")["versus"][1]
    # one process per run: 1.2x is within process-to-process variation, so inconclusive, and the gate fails it
    assert v["verdict"] == "inconclusive" and v["time_ratio"] == pytest.approx(1.2)
    assert cmp.main([CPU, later], fail_if=["median:10%"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: decode-nano(batch=1)/kv_cache [optimized]" in out and "re-measure" in out
    assert cmp.main([CPU, later], fail_if=["median:25%"]) == 0
    for field in ("mean", "min", "max"):
        assert cmp.main([CPU, later], fail_if=[f"{field}:10%"]) == 1
    assert cmp.main([CPU, later], fail_if=["median:0.001"]) == 1  # absolute seconds: +18 ms > 1 ms
    assert cmp.main([CPU, later], fail_if=["median:10"]) == 0
    assert cmp.main([later, CPU], fail_if=["median:10%"]) == 0  # an improvement never fails


def test_bad_input_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        cmp.compare([CPU, tmp_path / "missing.json"])
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(InputError, match="not a harness results file"):
        cmp.compare([CPU, tmp_path / "other.json"])
    with pytest.raises(InputError, match="at least two"):
        cmp.compare([CPU])
    for expr in ("foo:10%", "median", "median:ten%"):
        with pytest.raises(InputError, match="bad --fail-if"):
            cmp.main([CPU, CPU], fail_if=[expr])


def test_pytest_benchmark_export_reads_back_aligned(tmp_path):
    pb = tmp_path / "pb.json"
    pb.write_text(json.dumps(to_pytest_benchmark(json.loads(CPU.read_text()))))
    result = cmp.compare([CPU, pb])
    ok = [r for r in result["rows"] if r["entries"][0]["status"] == "ok"]
    assert ok and all(r["versus"][1]["time_ratio"] == pytest.approx(1.0) for r in ok)
    assert set(result["partial"]) == {c["id"] for c in json.loads(CPU.read_text())["cases"] if c["status"] != "ok"}


def test_table_and_html_output(tmp_path, capsys):
    out = tmp_path / "cmp.html"
    assert cmp.main([CPU, GPU], out=out) == 0
    text = capsys.readouterr().out
    assert "absent" in text and "not in every run:" in text
    html = out.read_text()
    assert html.startswith("<!doctype html>") and "default-src 'none'" in html


def test_comparison_escapes_strings(tmp_path):
    r = json.loads(CPU.read_text())
    r["cases"][4]["error"] = "<script>alert(1)</script>"
    r["environment"]["cpu"]["model"] = "<b>cpu</b>"
    p = tmp_path / "evil.json"
    p.write_text(json.dumps(copy.deepcopy(r)))
    html = compare_page.render_compare(cmp.compare([CPU, p]))
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert "<b>cpu</b>" not in html


REAL = DATA / "real"


def test_two_real_runs_with_no_common_case_list_every_case_as_partial():
    result = cmp.compare([REAL / "faulty-cpu.json", REAL / "bf16-weights-cpu.json"])
    files = ("faulty-cpu.json", "bf16-weights-cpu.json")
    ids = {c["id"] for f in files for c in json.loads((REAL / f).read_text())["cases"]}
    assert set(result["partial"]) == ids
    assert all(v is None for row in result["rows"] for v in row["versus"])
    html = compare_page.render_compare(result)
    assert "items/s" in html and "tokens/s" in html and "sequences/s" in html
    assert "RuntimeError: this plugin always raises" in html


def test_real_run_against_itself_compares_throughput_in_its_own_unit(tmp_path):
    doc = json.loads((REAL / "faulty-cpu.json").read_text())
    later = copy.deepcopy(doc)
    for case in later["cases"]:
        if case["status"] == "ok":
            for key in ("baseline", "metrics"):
                case[key]["latency"]["median"] *= 2
                case[key]["latency"]["data"] = [x * 2 for x in case[key]["latency"]["data"]]
                case[key]["throughput"]["items_per_s"] /= 2
    (tmp_path / "later.json").write_text(json.dumps(later))
    result = cmp.compare([REAL / "faulty-cpu.json", tmp_path / "later.json"])
    row = next(r for r in result["rows"] if r["case"] == "toy/noop" and r["side"] == "optimized")
    v = row["versus"][1]
    assert v["unit"] == "items_per_s"
    assert v["throughput_ratio"] == pytest.approx(0.5) and v["time_ratio"] == pytest.approx(2.0)
    assert v["verdict"] == "slower"
    assert cmp.check_fail_if(result, ["median:10%"])  # the gate catches the doubled time


def _edited(tmp_path: Path, name: str, edit) -> Path:
    """The CPU fixture with `edit(cases_by_id)` applied, written to tmp_path/name."""
    r = json.loads(CPU.read_text())
    edit({c["id"]: c for c in r["cases"]}, r)
    path = tmp_path / name
    path.write_text(json.dumps(r))
    return path


def test_the_gate_fails_a_broken_candidate_whatever_its_timings(tmp_path, capsys):
    """Issue 11 (1): oom, a failed check or a missing case fails --fail-if with a line naming the case and why."""
    case_id = "train-nano/activation_checkpointing"

    def oom(cases, r):
        cases[case_id].update(status="oom", error="OutOfMemoryError: CUDA out of memory")
        for key in ("baseline", "metrics", "comparison"):
            cases[case_id].pop(key)

    def broken_check(cases, r):
        cases[case_id]["checks"][0]["passed"] = False

    def missing(cases, r):
        r["cases"] = [c for c in r["cases"] if c["id"] != case_id]

    for name, edit, why in (("oom.json", oom, "status oom (ok in run #0): OutOfMemoryError"),
                            ("check.json", broken_check, "invariant check now fails: "),
                            ("missing.json", missing, "the case is missing")):
        cand = _edited(tmp_path, name, edit)
        assert cmp.main([CPU, cand], fail_if=["median:10%"]) == 1, name
        out = capsys.readouterr().out
        assert f"FAIL: {case_id} run #1 vs #0: {why}" in out, out
        assert cmp.main([CPU, cand], fail_if=["status"]) == 1  # the health gate alone
        capsys.readouterr()
    cand = _edited(tmp_path, "missing2.json", missing)
    assert cmp.main([CPU, cand], fail_if=["median:10%"], allow_missing=True) == 0
    assert cmp.main([CPU, _edited(tmp_path, "check2.json", broken_check)]) == 0  # no gate asked for
    table = capsys.readouterr().out
    assert "checks FAILED" in table
    html = compare_page.render_compare(cmp.compare([CPU, _edited(tmp_path, "check3.json", broken_check)]))
    assert "Status and invariant checks per run" in html and "(failed: " in html


def test_a_case_already_broken_in_the_first_run_is_not_a_new_failure(tmp_path):
    case_id = "train-nano/activation_checkpointing"

    def broken_check(cases, r):
        cases[case_id]["checks"][0]["passed"] = False

    base = _edited(tmp_path, "base.json", broken_check)
    assert cmp.main([base, _edited(tmp_path, "cand.json", broken_check)], fail_if=["status"]) == 0


def test_geometric_mean_speedup_and_its_interval_on_known_inputs():
    from harness.core.stats import geomean_speedup

    twice_as_fast = ([[2.0]] * 6, [[1.0]] * 6)  # every block of the later run half the time
    same = ([[1.0]] * 6, [[1.0]] * 6)
    assert geomean_speedup([twice_as_fast] * 3)["ci95"] == pytest.approx([2.0, 2.0])  # no noise, no spread
    g = geomean_speedup([twice_as_fast, same])
    # the interval resamples the cases: anywhere between both "same" (1) and both "twice as fast" (2)
    assert g["speedup"] == pytest.approx(2 ** 0.5) and g["ci95"] == pytest.approx([1.0, 2.0])
    assert g["cases"] == 2
    import numpy as np

    rng = np.random.default_rng(1)
    noisy = [([[x] for x in 2.0 * rng.lognormal(0, 0.05, 20)], [[x] for x in rng.lognormal(0, 0.05, 20)])
             for _ in range(4)]
    g = geomean_speedup(noisy)
    assert g["ci95"][0] < g["speedup"] < g["ci95"][1] and 1.9 < g["speedup"] < 2.1
    assert geomean_speedup([([[1.0]], [[1.0]])]) == {"speedup": None, "ci95": None, "cases": 0}


def test_an_optimization_that_pays_off_less_on_another_machine_is_flagged():
    import numpy as np

    from harness.core.stats import compare_effects

    rng = np.random.default_rng(0)
    bf16_here = 1.9 * rng.lognormal(0, 0.03, 30)
    bf16_there = 1.1 * rng.lognormal(0, 0.03, 30)
    effect = compare_effects(bf16_here, bf16_there)
    assert effect["verdict"] == "smaller" and effect["ratio"] == pytest.approx(1.1 / 1.9, rel=0.03)
    assert compare_effects(bf16_there, bf16_here)["verdict"] == "larger"
    twin = 1.9 * np.random.default_rng(7).lognormal(0, 0.03, 30)  # a second draw from the same distribution
    assert compare_effects(bf16_here, twin)["verdict"] in ("no significant difference", "inconclusive")
    assert compare_effects(bf16_here, twin, busy="later run busy")["verdict"] == "inconclusive"


def with_speedup(tmp_path: Path, factor: float, name: str = "later.json") -> tuple[Path, str]:
    """The CPU fixture with the first ok case's optimization made `factor` times as effective (per-pair ratios
    and speedup), timings otherwise unchanged."""
    r = json.loads(CPU.read_text())
    case = next(c for c in r["cases"] if c["status"] == "ok")
    c = case["comparison"]
    c["per_pair"] = [x * factor for x in c["per_pair"]]
    c["speedup"] *= factor
    c["ci95"] = [x * factor for x in c["ci95"]]
    path = tmp_path / name
    path.write_text(json.dumps(r))
    return path, case["id"]


def test_fail_if_speedup_fails_when_an_optimization_buys_less(tmp_path, capsys):
    worse, cid = with_speedup(tmp_path, 0.6)
    assert cmp.main([CPU, worse], fail_if=["speedup:10%"]) == 1
    out = capsys.readouterr().out
    assert f"FAIL: {cid} run #1 vs #0: speedup:10%: the optimization's speedup fell" in out and "40% lower" in out
    assert cmp.main([CPU, CPU], fail_if=["speedup:10%"]) == 0
    better, _ = with_speedup(tmp_path, 1.5, "better.json")
    assert cmp.main([CPU, better], fail_if=["speedup:10%"]) == 0  # an improvement never fails
    for bad in ("speedup:0.1", "speedup:-10%", "speedup:0%"):
        with pytest.raises(InputError, match="speedup takes a positive percentage"):
            cmp.main([CPU, CPU], fail_if=[bad])


def test_headline_names_what_differs_and_the_overall_speedup(tmp_path, capsys):
    result = cmp.compare([CPU, scaled(tmp_path, 1.25)])
    s = result["summaries"][0]
    assert s["geomean"]["cases"] == s["rows"] > 0 and s["geomean"]["speedup"] < 1  # the later run is slower
    assert s["slower"] and all(m["side"] == "optimized" for m in s["slower"])
    assert {e["label"] for e in cmp.compare([CPU, GPU])["headline_env"]} >= {"device", "CPU", "GPU", "torch"}
    assert cmp.main([CPU, scaled(tmp_path, 1.25)]) == 0
    out = capsys.readouterr().out
    assert "#1 vs #0: geometric-mean speedup" in out and "most slower:" in out and "optimization effect" in out


def test_runs_of_one_process_need_a_change_beyond_process_to_process_variation(tmp_path):
    """Two one-process runs 1.25x apart: inconclusive (measured: unchanged code moved 0.72-1.57x between two
    runs on a shared VM); with --repeat in both runs, the same data is called slower."""
    later = scaled(tmp_path, 1.25)
    row = next(r for r in cmp.compare([CPU, later])["rows"] if r["side"] == "optimized" and r["versus"][1])
    assert row["versus"][1]["verdict"] == "inconclusive" and "one process per run" in row["versus"][1]["reason"]
    repeated = []
    for path in (CPU, later):
        r = json.loads(Path(path).read_text())
        for c in r["cases"]:
            c["measurement"] = {**(c.get("measurement") or {}), "processes_repeated": 3}
        repeated.append(tmp_path / f"repeated-{len(repeated)}.json")
        repeated[-1].write_text(json.dumps(r))
    row = next(r for r in cmp.compare(repeated)["rows"] if r["side"] == "optimized" and r["versus"][1])
    assert row["versus"][1]["verdict"] == "slower"


def test_compare_sets_each_machines_capacity_and_serving_searches_side_by_side(tmp_path):
    serve = Path(__file__).parent / "data" / "serving-before-repeats.json"  # last session's reference, one search
    sized = Path(__file__).parent.parent / "reports" / "reference" / "epyc-2core-capacity" / "results.json"
    result = cmp.compare([serve, serve, sized])  # a serving record written before repeats existed still reads
    kinds = {(r["case"], r["kind"]): r for r in result["searches"]}
    serving_row = next(r for (_, kind), r in kinds.items() if kind == "serving")
    assert serving_row["headlines"][0] == serving_row["headlines"][1] and serving_row["headlines"][2] is None
    assert serving_row["headlines"][0] == ("sustainable rate at the SLO: 10.4 → 14.7 req/s (1.41x); "
                                           "saturated throughput 1.73x")
    capacity_rows = [r for (_, kind), r in kinds.items() if kind == "capacity"]
    assert len(capacity_rows) == 3 and all(r["headlines"][:2] == [None, None] for r in capacity_rows)
    text = compare_page.format_table(result)
    assert "  #0 sustainable rate at the SLO: 10.4 → 14.7 req/s" in text and "  #2 n/a" in text
    html = compare_page.render_compare(result)
    assert 'id="searches"' in html and html.count("<svg") >= 2 + 3 + len(result["runs"]) - 1
