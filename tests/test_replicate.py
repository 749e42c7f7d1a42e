"""harness.core.replicate and scripts/replicate-bench --from, on synthetic results dicts (nothing is timed)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core import replicate
from harness.core.errors import InputError

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "replicate-bench"


def case(cid: str, speedup: float | None, lo: float | None = None, hi: float | None = None,
         verdict: str = "faster", status: str = "ok", fcpu: float = 0.01, k: int | None = 5) -> dict:
    """A results record as the worker writes it, with only the fields the check reads."""
    ci = None if lo is None else [lo, hi]
    measurement = {"foreign_load": {"foreign_cpu": fcpu, "busy": fcpu >= 0.1}}
    if k is not None:
        measurement["processes_repeated"] = k
    return {"id": cid, "status": status, "comparison": {"speedup": speedup, "ci95": ci, "verdict": verdict},
            "measurement": measurement}


def results(*cases: dict, wall_s: float = 60.0) -> dict:
    return {"schema_version": 2, "run_id": "r", "wall_s": wall_s, "cases": list(cases)}


def test_three_runs_give_six_ordered_pairings_per_case():
    runs = [results(case("a", 1.05, 1.0, 1.1), case("b", 0.9, 0.85, 0.95, "slower")) for _ in range(3)]
    d = replicate.replicate(runs)
    assert [c["total"] for c in d["cases"]] == [6, 6]
    assert {(p["interval_of"], p["estimate_of"]) for p in d["cases"][0]["pairings"]} == {
        (i, j) for i in (1, 2, 3) for j in (1, 2, 3) if i != j}
    assert d["coverage"] == {"covered": 12, "total": 12, "share": 1.0, "honest": replicate.HONEST_COVERAGE}


def test_coverage_arithmetic_on_a_hand_made_example():
    # run 1: 1.10 [1.05, 1.15]; run 2: 1.00 [0.98, 1.02]; run 3: 1.04 [0.99, 1.12]
    # interval 1 holds none of 1.00, 1.04; interval 2 holds 1.00 only - not 1.10 nor 1.04; interval 3 holds 1.00 and
    # 1.10 (its own is excluded) -> 2 of 6 for "a". Case "b" agrees everywhere: 2 of 2. Total 4 of 8.
    runs = [results(case("a", 1.10, 1.05, 1.15), case("b", 1.0, 0.9, 1.1, "no significant difference")),
            results(case("a", 1.00, 0.98, 1.02, "no significant difference"),
                    case("b", 1.0, 0.9, 1.1, "no significant difference")),
            results(case("a", 1.04, 0.99, 1.12, "inconclusive"))]
    d = replicate.replicate(runs)
    a, b = d["cases"]
    assert (a["covered"], a["total"]) == (2, 6)
    assert {(p["interval_of"], p["estimate_of"]) for p in a["pairings"] if p["covered"]} == {(3, 1), (3, 2)}
    assert (b["covered"], b["total"], b["share"]) == (2, 2, 1.0)
    assert d["coverage"]["covered"] == 4 and d["coverage"]["total"] == 8 and d["coverage"]["share"] == 0.5
    assert "coverage: 4 of 8 pairings (50 %)" in replicate.format_report(d)


def test_faster_against_no_significant_difference_is_contradictory_but_not_against_inconclusive():
    runs = [results(case("x", 1.1, 1.05, 1.15, "faster"), case("y", 1.1, 1.05, 1.15, "faster")),
            results(case("x", 1.02, 0.99, 1.05, "no significant difference"),
                    case("y", 1.08, 0.9, 1.3, "inconclusive"))]
    d = replicate.replicate(runs)
    assert d["contradictory"] == ["x"]
    assert d["changed_inconclusive"] == ["y"]
    report = replicate.format_report(d)
    assert "contradictory verdicts: 1 of 2 cases" in report and "x: faster / no significant difference" in report
    assert "verdict changed to/from inconclusive (allowed): 1 of 2 cases" in report


@pytest.mark.parametrize("verdicts, contradictory", [
    (["faster", "slower"], True), (["slower", "no significant difference"], True),
    (["faster", "faster", "inconclusive"], False), (["slower", "inconclusive"], False),
    (["no significant difference", "inconclusive"], False), (["faster", "faster"], False)])
def test_contradiction_rule(verdicts, contradictory):
    assert replicate.is_contradictory(verdicts) is contradictory


def test_a_case_missing_or_failed_in_one_run_is_compared_over_the_others():
    runs = [results(case("a", 1.05, 1.0, 1.1), case("b", 1.2, 1.1, 1.3), case("c", 1.0, 0.9, 1.1)),
            results(case("a", 1.04, 1.0, 1.1), case("b", None, status="failed")),
            results(case("a", 1.06, 1.0, 1.1), case("b", 1.25, 1.15, 1.35))]
    d = replicate.replicate(runs)
    by_id = {c["id"]: c for c in d["cases"]}
    assert set(by_id) == {"a", "b"} and by_id["a"]["total"] == 6
    assert by_id["b"]["total"] == 2 and by_id["b"]["covered"] == 2  # runs 1 and 3 only
    assert [e["status"] for e in by_id["b"]["runs"]] == ["ok", "failed", "ok"]
    assert d["skipped"] == [{"id": "c", "statuses": ["ok", "missing", "missing"]}]
    lines = replicate.format_report(d).splitlines()
    row = next(line for line in lines if line.startswith("b "))
    assert "failed" in row and row.split()[-1] == "2/2"
    assert any(line.strip().startswith("c: ok, missing, missing") for line in lines)


def test_run_summary_foreign_cpu_wall_and_processes():
    runs = [results(case("a", 1.0, 0.9, 1.1, fcpu=0.02), case("b", 1.0, 0.9, 1.1, fcpu=0.15), wall_s=120.0),
            results(case("a", 1.0, 0.9, 1.1, k=None), case("b", 1.0, 0.9, 1.1, k=None), wall_s=30.0)]
    d = replicate.replicate(runs)
    first, second = d["runs"]
    assert first["foreign_cpu"] == [0.02, 0.15] and first["busy_cases"] == 1 and first["processes"] == [5]
    assert second["processes"] == [1] and second["wall_s"] == 30.0
    report = replicate.format_report(d)
    assert "run 1: wall 120 s, foreign CPU 2 % to 15 %, busy cases 1, processes per case K=5" in report


def test_cells_and_needs_two_runs():
    d = replicate.replicate([results(case("a", 1.06, 1.02, 1.08)), results(case("a", 1.07, 1.03, 1.09))])
    assert "1.06x [1.02, 1.08] faster" in replicate.format_report(d)
    with pytest.raises(InputError):
        replicate.replicate([results(case("a", 1.0, 0.9, 1.1))])


def test_script_from_mode_end_to_end(tmp_path):
    paths = []
    for i, (s, lo, hi, v) in enumerate([(1.06, 1.02, 1.08, "faster"), (1.01, 0.98, 1.07, "no significant difference")]):
        (tmp_path / f"run-{i}").mkdir()
        p = tmp_path / f"run-{i}" / "results.json"
        p.write_text(json.dumps(results(case("train-nano/amp", s, lo, hi, v), case("gen-nano/kv", 0.95, 0.9, 1.0,
                                                                                    "slower"))))
        paths.append(str(p))
    out = tmp_path / "replication.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--from", *paths, "--json", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1.06x [1.02, 1.08] faster" in proc.stdout and "1.01x [0.98, 1.07] no significant difference" in proc.stdout
    # amp: interval 2 holds 1.06 -> 1/2; kv: both hold 0.95 -> 2/2; total 3 of 4
    assert "coverage: 3 of 4 pairings (75 %)" in proc.stdout
    assert "contradictory verdicts: 1 of 2 cases" in proc.stdout and "train-nano/amp: faster" in proc.stdout
    d = json.loads(out.read_text())
    assert d["contradictory"] == ["train-nano/amp"] and d["paths"] == paths


def test_script_rejects_bad_input(tmp_path):
    one = tmp_path / "results.json"
    one.write_text(json.dumps(results(case("a", 1.0, 0.9, 1.1))))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--from", str(one)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "at least two runs" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "quick"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2  # N missing: nothing is run


def test_script_run_mode_runs_harness_n_times_and_passes_extra_args(tmp_path, monkeypatch, capsys):
    """SUITE N: N `harness run` subprocesses (faked here, nothing is timed), each with its own --out and the
    arguments after `--`; then the table and DIR/replication.json."""
    loader = importlib.machinery.SourceFileLoader("replicate_bench", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("replicate_bench", loader))
    loader.exec_module(module)
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps(results(case("a", 1.0 + len(calls) / 100, 0.9, 1.2))))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(module.subprocess, "run", fake_run)
    assert module.main(["quick", "3", "--out", str(tmp_path), "--", "--repeat", "1", "--device", "cpu"]) == 0
    assert calls == [[sys.executable, "-m", "harness.core.cli", "run", "quick", "--out", str(tmp_path / f"run-{i}"),
                      "--repeat", "1", "--device", "cpu"] for i in (1, 2, 3)]
    assert "coverage: 6 of 6 pairings (100 %)" in capsys.readouterr().out
    assert json.loads((tmp_path / "replication.json").read_text())["coverage"]["total"] == 6
