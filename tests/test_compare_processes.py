"""`harness compare` between runs measured in several processes: the case's two-level comparison
(`harness.core.stats.compare_runs`, `compare_effects_runs`) instead of the one-process margins, which stay, with a
note, when either run has one process. Synthetic numbers, no timing, no torch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness.core import stats
from harness.report import compare as cmp
from harness.report import compare_page
from harness.report.export import load_run

CPU = Path(__file__).parent / "data" / "results-cpu.json"
CALLED = ("faster", "slower", "larger", "smaller")
SHIFT = 0.08  # SD of log of a process's own level (memory placement, frequency): 8%, each process and side
NOISE = 0.02  # SD of log of one sample within a process


def _process_blocks(rng: np.random.Generator, center: float, k: int, pairs: int) -> list[list[list[float]]]:
    """Per process, `pairs` blocks of 3 samples around `center` times that process's own level."""
    return [[list(center * level * rng.lognormal(0, NOISE, 3)) for _ in range(pairs)]
            for level in rng.lognormal(0, SHIFT, k)]


def processes_file(tmp_path: Path, name: str, seed: int, slowdown: float = 1.0, k: int = 5, pairs: int = 12) -> Path:
    """The CPU fixture's ok cases as if run with `--repeat k`: each side's blocks drawn around its median times
    `slowdown` with a process-level shift (SHIFT), `latency.process_blocks`, and the comparison of the runner
    (`compare_groups` over each process's pair ratios, `per_pair`, `process_pairs`)."""
    r = load_run(CPU)
    rng = np.random.default_rng(seed)
    for c in r["cases"]:
        if c["status"] != "ok":
            continue
        c["measurement"]["processes_repeated"] = k
        by_side = {}
        for key in ("baseline", "optimized"):
            lat = c[key]["latency"]
            by_side[key] = _process_blocks(rng, lat["median"] * slowdown, k, pairs)
            blocks = [b for proc in by_side[key] for b in proc]
            c[key]["latency"] = {**stats.summarize([x for b in blocks for x in b], lat.get("iterations", 1),
                                                   [len(b) for b in blocks]), "process_blocks": [pairs] * k}
        groups = [stats.pair_ratios(b, o) for b, o in zip(by_side["baseline"], by_side["optimized"])]
        c["comparison"] = {**stats.compare_groups(groups), "per_pair": [x for g in groups for x in g],
                           "process_pairs": [len(g) for g in groups]}
    path = tmp_path / name
    path.write_text(json.dumps(r))
    return path


def verdicts(result: dict) -> tuple[list[str], list[str]]:
    """The case sides' and the optimization effects' verdicts of run #1 against #0."""
    return ([r["versus"][1]["verdict"] for r in result["rows"] if r["versus"][1]],
            [e["versus"][1]["verdict"] for e in result["effects"] if e["versus"][1]])


def test_process_groups_follow_process_blocks_and_pairs(tmp_path):
    path = processes_file(tmp_path, "a.json", seed=1, k=3, pairs=4)
    case = next(c for c in load_run(path)["cases"] if c["status"] == "ok")
    groups = cmp.process_groups(case["optimized"]["latency"])
    assert [len(g) for g in groups] == [4, 4, 4]
    assert [len(g) for g in cmp.pair_groups(case)] == [4, 4, 4]
    old = next(c for c in load_run(CPU)["cases"] if c["status"] == "ok")  # no process_blocks: one group
    assert len(cmp.process_groups(old["optimized"]["latency"])) == 1 and len(cmp.pair_groups(old)) == 1
    assert cmp.process_groups({"data": [1.0, 2.0], "blocks": [1, 1], "process_blocks": [1, 5]}) == [[1.0, 2.0]]


def test_two_runs_of_the_same_distribution_are_never_called_faster_or_slower(tmp_path):
    """(a) Two independent runs of the same distribution, 5 processes each with an 8% process-level shift: no case
    side and no optimization effect is called faster/slower/larger/smaller, and no note (no margin is used). The
    shift is real: the same blocks pooled into one group per run (what ignoring the processes amounts to) have
    some sides called faster or slower."""
    first, later = processes_file(tmp_path, "first.json", seed=1), processes_file(tmp_path, "later.json", seed=2)
    result = cmp.compare([first, later])
    sides, effects = verdicts(result)
    assert len(sides) == 16 and len(effects) == 8
    assert not set(sides + effects) & set(CALLED), (sides, effects)
    assert all(r["versus"][1]["processes"] == [5, 5] and r["versus"][1]["note"] is None
               for r in result["rows"] if r["versus"][1])
    assert all(e["versus"][1]["note"] is None for e in result["effects"] if e["versus"][1])
    pooled = [stats.compare_unpaired([[x] for g in cmp.process_groups(r["entries"][0]["latency"]) for x in g],
                                     [[x] for g in cmp.process_groups(r["entries"][1]["latency"]) for x in g])
              for r in result["rows"] if r["versus"][1]]
    assert {p["verdict"] for p in pooled} & {"faster", "slower"}
    assert cmp.main([first, later]) == 0 and compare_page.notes(result) == []


def test_a_thirty_percent_slowdown_in_every_process_is_slower_and_fails_the_gate(tmp_path, capsys):
    """(b) The later run 1.3x slower on both sides in every process: every case side "slower" (no margin: 1.3x is
    under the one-process 1.6x) but the one the fixture marks busy (inconclusive, busy), the optimization effects
    unchanged, and `--fail-if median:10%` fails every side, on the verdict (no "re-measure") but the busy one."""
    first, later = processes_file(tmp_path, "first.json", seed=1), processes_file(tmp_path, "later.json", 2, 1.3)
    result = cmp.compare([first, later])
    versus = [r["versus"][1] for r in result["rows"] if r["versus"][1]]
    assert [v["verdict"] for v in versus if not v["busy"]] == ["slower"] * 14
    assert [v["verdict"] for v in versus if v["busy"]] == ["inconclusive"] * 2
    assert not set(verdicts(result)[1]) & set(CALLED)
    assert all(1 / 1.45 < v["speedup"] < 1 / 1.15 for v in versus)
    assert cmp.main([first, later], fail_if=["median:10%"]) == 1
    out = capsys.readouterr().out
    fails = [line for line in out.splitlines() if line.startswith("FAIL:")]
    assert len(fails) == 16 and [line for line in fails if "re-measure" in line] == [
        line for line in fails if "decode-nano(batch=16)/kv_cache" in line]
    assert cmp.main([later, first], fail_if=["median:10%"]) == 0  # an improvement never fails


def test_a_one_process_run_against_a_multi_process_one_keeps_the_margins_with_a_note(tmp_path, capsys):
    """(c) The old one-process CPU fixture against a 5-process run 1.3x slower: compare_unpaired and the 1.6x /
    1.2x margins (1.3x is then inconclusive, never "slower"), and each row and effect carries the note naming
    run #0; the table marks those verdicts and prints the note, the page shows it."""
    later = processes_file(tmp_path, "later.json", seed=2, slowdown=1.3)
    result = cmp.compare([CPU, later])
    rows = [r["versus"][1] for r in result["rows"] if r["versus"][1]]
    effects = [e["versus"][1] for e in result["effects"] if e["versus"][1]]
    note = cmp.margin_note(1, (1, 5))
    assert note.startswith("one process in run #0: compared with the fixed margins 1.6x time / 1.2x effect")
    assert all(v["note"] == note and v["processes"] == [1, 5] for v in rows + effects)
    assert "slower" not in [v["verdict"] for v in rows]
    assert any("one process per run" in (v["reason"] or "") for v in rows)  # the margin turned a verdict
    assert cmp.margin_note(1, (1, 1)).startswith("one process in runs #0 and #1:")
    assert cmp.main([CPU, later], fail_if=["median:10%"]) == 1  # inconclusive breaches fail: re-measure
    out = capsys.readouterr().out
    assert f"* {note}" in out and "inconclusive *" in out and "re-measure" in out
    html = compare_page.render_compare(result)
    assert "* one-process margins" in html and note in html


def test_runs_with_agreeing_processes_get_the_one_group_interval():
    """(d) compare_runs over K = 5 processes that agree exactly (each process the same 12 block medians, in its
    own order) gives an interval at most 1.1x as wide (in log) as the same values pooled into one group per run:
    no process-to-process spread, so neither the process level of the resample nor the t(df) widening (df large)
    adds width. Processes drawn independently from one distribution (agreeing only up to their noise) get at most
    1.6x: the two-level resample counts the within-process noise again at the process level (about 1.3x here), a
    property of the case's own interval (`bootstrap_interval`) that compare_runs shares."""
    rng = np.random.default_rng(3)
    base = [list(rng.lognormal(0, 0.05, 12)), list(rng.lognormal(0.1, 0.05, 12))]
    agree = [[list(rng.permutation(b)) for _ in range(5)] for b in base]

    def width(first, later):
        lo, hi = stats.compare_runs(first, later)["ci95"]
        return math.log(hi / lo)

    def pooled(groups):
        return [[x for g in groups for x in g]]

    assert width(*agree) <= 1.1 * width(*(pooled(g) for g in agree))
    assert stats.compare_runs(*agree)["df"] > 50
    draws = [[list(rng.lognormal(mu, 0.05, 12)) for _ in range(5)] for mu in (0.0, 0.1)]
    assert width(*(pooled(g) for g in draws)) < width(*draws) <= 1.6 * width(*(pooled(g) for g in draws))


def test_compare_runs_estimate_interval_and_verdicts_on_known_inputs():
    """The estimate is the ratio of the pooled medians; a constant process shift widens the interval by t(df)/z
    with the Welch-Satterthwaite df of both runs; fewer than 2 blocks (5 pairs for effects) gives no verdict."""
    rng = np.random.default_rng(4)
    first = [list(1.0 * level * rng.lognormal(0, 0.01, 10)) for level in (0.9, 1.0, 1.1, 0.95, 1.05)]
    later = [[x * 1.5 for x in g] for g in first]  # every block 1.5x as long: later 1/1.5 as fast
    c = stats.compare_runs(first, later)
    assert c["speedup"] == pytest.approx(1 / 1.5) and c["verdict"] == "slower" and c["processes"] == [5, 5]
    assert c["ci95"][0] < 1 / 1.5 < c["ci95"][1] and 3 < c["df"] < 12  # the process shift dominates: few df
    assert stats.compare_runs(later, first)["verdict"] == "faster"
    assert stats.compare_runs(first, first)["verdict"] in ("no significant difference", "inconclusive")
    assert stats.compare_runs(first, later, busy="later run: busy")["verdict"] == "inconclusive"
    assert stats.compare_runs([[1.0]], later)["reason"] == "fewer than 2 blocks"
    e = stats.compare_effects_runs(first, later)  # read as per-pair ratios: later's optimization buys 1.5x more
    assert e["ratio"] == pytest.approx(1.5) and e["verdict"] == "larger"
    assert stats.compare_effects_runs(later, first)["verdict"] == "smaller"
    assert stats.compare_effects_runs([[1.0] * 4], later)["verdict"] == "inconclusive"
    one = [[x for g in first for x in g]]  # one process each: no widening, the plain two-level = one-level
    assert stats.compare_runs(one, [[x * 1.5 for x in one[0]]])["processes"] == [1, 1]
