"""Compare runs (machines, commits, library versions): align cases by id, ratio per metric, significance, gate.

Each side of each case (baseline / optimized) is one entry. For every later run against the first: time ratio
(later / first median), throughput and peak-memory ratios, and a verdict over the two runs' timed blocks by the
runner's own rule (`harness.core.stats.verdict`: faster/slower only when the 95% interval excludes 1, the change is at
least 5% and neither run was busy; inconclusive when the interval is too wide or a run was busy). When both runs
were measured in several processes (`harness run --repeat N`, `latency.process_blocks`) the interval is the
case's own two-level one (`harness.core.stats.compare_runs`: processes, then blocks); when either run has one process
it is `harness.core.stats.compare_unpaired` over the blocks, and a verdict needs a change beyond the fixed margins
measured on one VM (`harness.core.stats.process_guard`), which the row's `note` says. Cases present in only some runs
are listed, not dropped. `--fail-if median:10%` follows pytest-benchmark's `--benchmark-compare-fail` (a later
run's statistic more than 10%, or without %, more than that many seconds, above the first run's) with one
definition of significance (the verdict above, whichever comparison made it): a breach fails the gate when
the change is "slower" or "inconclusive"; a breach that the verdict calls "no significant difference" is noise
and is printed as a note. Any `--fail-if` (or `--fail-if status` alone) also fails the gate when a case that was
ok in the first run is not ok, fails a check it passed, or (unless `--allow-missing`) is missing in a later run.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path
from typing import Any

from pytest_benchmark.utils import PercentageRegressionCheck, parse_compare_fail

from harness.core import capacity, cost, stats
from harness.core.errors import InputError
from harness.core.results import write_text
from harness.report import serving
from harness.report.compare_page import format_table, render_compare
from harness.report.export import NOT_COMPARABLE, load_run
from harness.report.formatting import SIDES, flatten, fmt_ratio, is_number

IGNORED_ENV = ("hostname",)  # differs on every machine; shown, not highlighted
HEADLINE_ENV = (("device", "device"), ("cpu.model", "CPU"), ("cuda.devices[0].name", "GPU"),
                ("nvml.driver", "driver"), ("cuda.cuda_version", "CUDA"), ("torch", "torch"), ("python", "python"),
                ("threads.torch_num_threads", "threads"), ("precision.allow_tf32_matmul", "TF32 matmuls"),
                ("precision.float32_matmul_precision", "fp32 matmul precision"), ("git.commit", "commit"))
MOVED = 3  # cases listed as having moved most, in each direction


def _sides(case: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    if case.get("status") != "ok":
        return []
    if "baseline" in case:
        return [(label, case[key]) for label, key in SIDES if isinstance(case.get(key), dict)]
    # a foreign pytest-benchmark entry: one side
    return [("", case["optimized"])] if isinstance(case.get("optimized"), dict) else []


def _entry(case: dict[str, Any] | None, side: dict[str, Any] | None, price: float | None,
           label: str = "") -> dict[str, Any]:
    if case is None:
        return {"present": False, "status": "absent"}
    if side is None and case.get("status") == "ok":
        return {"present": True, "status": NOT_COMPARABLE, "error": f"the case records no {label or 'timed'} side"}
    if side is None:
        return {"present": True, "status": case.get("status"), "error": case.get("error")}
    throughput = side.get("throughput") or {}
    load = (case.get("measurement") or {}).get("foreign_load") or {}
    unit = sorted(throughput, key=lambda k: k != "tokens_per_s")[0] if throughput else None
    money = cost.side_cost(side, price)
    return {"present": True, "status": "ok", "latency": side["latency"], "median": side["latency"]["median"],
            "throughput": throughput, "unit": unit, "rate": throughput.get(unit) if unit else None,
            "tokens_per_s": throughput.get("tokens_per_s"), "peak_bytes": (side.get("memory") or {}).get("peak_bytes"),
            "cost_unit": money["unit"], "usd_per_1m_units": money["usd_per_1m_units"],
            "usd_per_1m_tokens": money["usd_per_1m_tokens"], "busy": load.get("reason") if load.get("busy") else None,
            "processes": processes(case)}


def processes(case: dict[str, Any]) -> int:
    """Fresh processes the case was timed in (`harness run --repeat N`), 1 otherwise."""
    return int((case.get("measurement") or {}).get("processes_repeated") or 1)


def _by_process(values: list[float], counts: list[int] | None) -> list[list[float]]:
    """`values` cut into consecutive groups of `counts` (empty ones dropped); one group when `counts` is not
    recorded or does not add up to len(values)."""
    if not counts or sum(counts) != len(values):
        return [list(values)] if values else []
    out, start = [], 0
    for n in counts:
        out.append(list(values[start:start + n]))
        start += n
    return [g for g in out if g]


def process_groups(latency: dict[str, Any]) -> list[list[float]]:
    """A side's block medians (seconds) grouped by the process that timed them (`latency.process_blocks`, written
    by `harness run --repeat N`); one group when not recorded (one process, older files)."""
    return _by_process([statistics.median(b) for b in stats.split_blocks(latency)], latency.get("process_blocks"))


def pair_groups(case: dict[str, Any]) -> list[list[float]]:
    """A measured case's per-pair ratios grouped by process (`comparison.process_pairs`); one group when not
    recorded."""
    cmp = case.get("comparison") or {}
    return _by_process(pair_ratios_of(case), cmp.get("process_pairs") if cmp.get("per_pair") else None)


def margin_note(i: int, counts: tuple[int, int]) -> str:
    """Why a comparison of run #i against #0 fell back to the fixed margins: which of them has one process."""
    which = " and ".join(f"#{j}" for j, k in zip((0, i), counts) if k < 2)
    return (f"one process in run{'s' if ' and ' in which else ''} {which}: compared with the fixed margins "
            f"{stats.ONE_PROCESS_TIME_MARGIN:g}x time / {stats.ONE_PROCESS_EFFECT_MARGIN:g}x effect measured on one "
            "VM (docs/measurement.md); measure both runs with the default --repeat to compare processes")


def _ratio(a: float | None, b: float | None) -> float | None:
    """b / a when both are positive finite numbers and so is the quotient, else None (never inf or nan)."""
    if not (is_number(a) and is_number(b) and a > 0 and b >= 0):
        return None
    out = b / a
    return out if math.isfinite(out) else None


def _versus(first: dict[str, Any], later: dict[str, Any], i: int = 1) -> dict[str, Any] | None:
    """Later run (#i) against the first for one entry: ratios and the bootstrap verdict (speedup > 1 = later
    faster): `stats.compare_runs` over the process groups when both runs have several, else
    `stats.compare_unpaired` over the blocks, with the one-process margin and its `note` when a run has one."""
    if first.get("status") != "ok" or later.get("status") != "ok":
        return None
    unit = first["unit"] if first["unit"] in later["throughput"] else None
    counts = (first["processes"], later["processes"])
    out = {"time_ratio": _ratio(first["median"], later["median"]), "unit": unit,
           "throughput_ratio": _ratio(first["rate"], later["throughput"].get(unit)) if unit else None,
           "memory_ratio": _ratio(first["peak_bytes"], later["peak_bytes"]),
           "speedup": None, "ci95": None, "verdict": "n/a (no samples)", "reason": None,
           "busy": bool(first["busy"] or later["busy"]), "processes": list(counts), "note": None}
    a, b = process_groups(first["latency"]), process_groups(later["latency"])
    if sum(map(len, a)) < 2 or sum(map(len, b)) < 2:
        return out
    busy = "; ".join(f"{name} run: {e['busy']}" for name, e in (("first", first), ("later", later)) if e["busy"])
    if min(len(a), len(b)) >= 2:
        c = stats.compare_runs(a, b, busy=busy or None)
    else:
        c = stats.compare_unpaired([[x] for g in a for x in g], [[x] for g in b for x in g], busy=busy or None)
        if min(counts) < 2:
            c = stats.process_guard(c, "speedup", stats.ONE_PROCESS_TIME_MARGIN, ("faster", "slower"))
            out["note"] = margin_note(i, counts)
    out.update(speedup=c["speedup"], ci95=c["ci95"], verdict=c["verdict"], reason=c["reason"])
    return out


def compare(paths: list[Path], price_per_hour: float | None = None,
            prices: dict[str, float] | None = None) -> dict[str, Any]:
    """Align the runs at `paths` (harness results or pytest-benchmark JSON) by case id and side."""
    if len(paths) < 2:
        raise InputError("compare needs at least two results files")
    runs = [load_run(p) for p in paths]
    envs = [flatten(r.get("environment") or {}) for r in runs]
    run_prices = [cost.price_for(r.get("environment") or {}, price_per_hour, prices) for r in runs]
    keys = list(dict.fromkeys(k for e in envs for k in e))
    env_rows = [{"key": k, "values": [e.get(k) for e in envs],
                 "differs": k not in IGNORED_ENV and len({repr(e.get(k)) for e in envs}) > 1} for k in keys]
    by_id = [{c["id"]: c for c in r["cases"]} for r in runs]
    ids = list(dict.fromkeys(c["id"] for r in runs for c in r["cases"]))
    rows = []
    for cid in ids:
        cases = [m.get(cid) for m in by_id]
        labels = list(dict.fromkeys(label for c in cases if c for label, _ in _sides(c))) or [""]
        for label in labels:
            entries = []
            for c, price in zip(cases, run_prices):
                side = dict(_sides(c)).get(label) if c else None
                entries.append(_entry(c, side, price and price[0], label))
            rows.append({"case": cid, "side": label, "entries": entries,
                         "versus": [None] + [_versus(entries[0], e, i) for i, e in enumerate(entries[1:], 1)]})
    effects = effect_rows(ids, by_id)
    return {
        "headline_env": [{"label": label, "values": [e.get(key) for e in envs]} for key, label in HEADLINE_ENV
                         if any(e.get(key) is not None for e in envs)
                         and (key == "device" or len({repr(e.get(key)) for e in envs}) > 1)],
        "summaries": [summary(rows, i) for i in range(1, len(runs))],
        "effects": effects,
        "runs": [{"path": str(p), "run_id": r.get("run_id"), "suite": (r.get("suite") or {}).get("name"),
                  "started": r.get("started"), "device": cost.device_name(r.get("environment") or {}),
                  "imported_from": r.get("imported_from"), "price": price}
                 for p, r, price in zip(paths, runs, run_prices)],
        "env_rows": env_rows,
        "rows": rows,
        "partial": [cid for cid in ids if any(cid not in m for m in by_id)],
        "health": [{"case": cid, "runs": [_health(m.get(cid)) for m in by_id]} for cid in ids],
        "searches": search_rows(ids, by_id),
    }


def summary(rows: list[dict[str, Any]], i: int) -> dict[str, Any]:
    """Run #i against #0 at a glance: the geometric mean of the per-case speedups with its interval
    (`harness.core.stats.geomean_speedup`) and the case sides that moved most each way (by speedup, with verdicts)."""
    both = [r for r in rows if r["versus"][i] and r["versus"][i].get("speedup")]
    geo = stats.geomean_speedup([(stats.split_blocks(r["entries"][0]["latency"]),
                                  stats.split_blocks(r["entries"][i]["latency"])) for r in both])
    moved = [{"case": r["case"], "side": r["side"], **r["versus"][i]}
             for r in sorted(both, key=lambda r: r["versus"][i]["speedup"])]
    stuck = [f"{r['case']} [{r['side'] or '-'}]" for r in rows
             if NOT_COMPARABLE in (r["entries"][0]["status"], r["entries"][i]["status"])]
    return {"run": i, "geomean": geo, "rows": len(both), "not_comparable": stuck,
            "faster": [m for m in reversed(moved) if m["speedup"] > 1][:MOVED],
            "slower": [m for m in moved if m["speedup"] < 1][:MOVED]}


def pair_ratios_of(case: dict[str, Any]) -> list[float]:
    """A measured case's per-pair ratios (baseline / optimized): recorded ones, else from its blocks (older
    files: rounds)."""
    cmp = case.get("comparison") or {}
    if cmp.get("per_pair"):
        return list(cmp["per_pair"])
    if not all(isinstance(case.get(k), dict) for k in ("baseline", "optimized")):
        return []
    return stats.pair_ratios(stats.split_blocks(case["baseline"]["latency"]),
                             stats.split_blocks(case["optimized"]["latency"]))


def effect_rows(ids: list[str], by_id: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """For each case with a baseline: the optimization's speedup in each run, and whether it differs between
    run #i and #0 (`_effect_versus`): where an optimization is worth turning on."""
    out = []
    for cid in ids:
        cases = [m.get(cid) for m in by_id]
        if not any(c and c.get("status") == "ok" and "baseline" in c for c in cases):
            continue
        runs = []
        for c in cases:
            cmp = (c or {}).get("comparison") or {}
            ok = c is not None and c.get("status") == "ok" and cmp.get("speedup") is not None
            load = ((c or {}).get("measurement") or {}).get("foreign_load") or {}
            runs.append({"speedup": cmp.get("speedup"), "ci95": cmp.get("ci95"), "verdict": cmp.get("verdict"),
                         "busy": load.get("reason") if load.get("busy") else None, "processes": processes(c),
                         "groups": pair_groups(c)} if ok else None)
        versus = [None] + [_effect_versus(runs[0], later, i) if runs[0] and later else None
                           for i, later in enumerate(runs[1:], start=1)]
        for r in runs:
            if r:
                r.pop("groups")
        out.append({"case": cid, "runs": runs, "versus": versus})
    return out


def _effect_versus(first: dict[str, Any], later: dict[str, Any], i: int) -> dict[str, Any]:
    """Whether the optimization's speedup differs between run #i and #0: `stats.compare_effects_runs` over the
    pair ratios grouped by process when both runs have several, else `stats.compare_effects` over all pairs,
    with the one-process margin and its `note` when a run has one."""
    busy = "; ".join(f"{name} run busy" for name, r in (("first", first), ("later", later)) if r["busy"]) or None
    a, b, counts = first["groups"], later["groups"], (first["processes"], later["processes"])
    if min(len(a), len(b)) >= 2:
        return {**stats.compare_effects_runs(a, b, busy=busy), "busy": bool(busy), "note": None}
    effect = {**stats.compare_effects([x for g in a for x in g], [x for g in b for x in g], busy=busy),
              "busy": bool(busy), "processes": list(counts), "note": None}
    if min(counts) < 2:
        effect = stats.process_guard(effect, "ratio", stats.ONE_PROCESS_EFFECT_MARGIN, ("larger", "smaller"))
        effect["note"] = margin_note(i, counts)
    return effect


def search_rows(ids: list[str], by_id: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Cases with a capacity or serving search in some run: that search's record per run (None where a run lacks
    it) and its headline (`harness.core.capacity.headline`, `harness.workloads.serve.search.headline`), side by side."""
    out = []
    for cid in ids:
        cases = [m.get(cid) or {} for m in by_id]
        for kind, headline in (("capacity", capacity.headline), ("serving", serving.headline)):
            if any(c.get(kind) for c in cases):
                out.append({"case": cid, "kind": kind, "records": [c.get(kind) for c in cases],
                            "headlines": [headline(c.get(kind)) or None for c in cases]})
    return out


def _health(case: dict[str, Any] | None) -> dict[str, Any]:
    """A case's status and the names of its failed checks in one run ("absent" when the run lacks it)."""
    if case is None:
        return {"status": "absent", "failed_checks": [], "checks": 0}
    checks = case.get("checks") or []
    return {"status": case.get("status"), "failed_checks": [c.get("name") for c in checks if not c.get("passed")],
            "checks": len(checks), "error": (case.get("error") or "").splitlines()[0][:160] if case.get("error")
            else None}


def health_failures(result: dict[str, Any], allow_missing: bool = False) -> list[str]:
    """What makes a later run broken whatever its timings: a case ok in the first run that is not ok (or, unless
    `allow_missing`, absent) in a later run, or a check that passed in the first run and fails in a later one."""
    failures = []
    for item in result["health"]:
        first = item["runs"][0]
        if first["status"] != "ok":
            continue
        for i, later in enumerate(item["runs"][1:], start=1):
            where = f"{item['case']} run #{i} vs #0"
            if later["status"] == "absent":
                if not allow_missing:
                    failures.append(f"{where}: the case is missing (ok in run #0; --allow-missing to accept)")
            elif later["status"] != "ok":
                failures.append(f"{where}: status {later['status']} (ok in run #0)"
                                + (f": {later['error']}" if later.get("error") else ""))
            else:
                broke = [n for n in later["failed_checks"] if n not in first["failed_checks"]]
                if broke:
                    failures.append(f"{where}: invariant check now fails: {', '.join(broke)}")
    return failures


def check_fail_if(result: dict[str, Any], fail_if: list[str] | tuple[str, ...],
                  notes: list[str] | None = None) -> list[str]:
    """Messages for each `--fail-if` expression breached by a later run against the first run, unless the
    change is "no significant difference" by the shared rule: those go to `notes`."""
    checks, effect_limits = [], []
    for expr in fail_if:
        if expr == "status":  # the health gate alone (health_failures), no timing threshold
            continue
        if expr.startswith("speedup:"):
            effect_limits.append((expr, _percent(expr)))
            continue
        try:
            check = parse_compare_fail(expr)
            if not math.isfinite(check.threshold):  # median:1e999 would be a gate that never trips
                raise argparse.ArgumentTypeError(expr)
            checks.append((expr, check))
        except argparse.ArgumentTypeError:
            raise InputError(f"bad --fail-if expression {expr!r}: use FIELD:N% or FIELD:SECONDS with FIELD one of "
                             "min, max, mean, median, stddev, iqr (e.g. median:10%, median:0.001), or "
                             "speedup:N% (an optimization's speedup dropped by more than N%)",
                             field="fail-if") from None
    failures = []
    for row in result["rows"]:
        first = row["entries"][0]
        for i, later in enumerate(row["entries"][1:], start=1):
            where = f"{row['case']} [{row['side'] or '-'}] run #{i} vs #0"
            stuck = [f"run #{j}: {e.get('error')}" for j, e in ((0, first), (i, later))
                     if e["status"] == NOT_COMPARABLE]
            if stuck and checks:  # a time the gate cannot read never passes it
                failures.append(f"{where}: not comparable: {'; '.join(stuck)}")
                continue
            if first["status"] != "ok" or later["status"] != "ok":
                continue
            versus = row["versus"][i] or {}
            for expr, check in checks:
                problem = _statistic_problem(check, first["latency"], later["latency"], i)
                if problem:
                    failures.append(f"{where}: {expr}: not comparable: {problem}")
                    continue
                msg = None if problem == "" else check.fails(later["latency"], first["latency"])
                if not msg:
                    continue
                _breach(f"{where}: {expr}: {msg}", versus, failures, notes)
    for row in result.get("effects", []):
        first = row["runs"][0]
        for i, later in enumerate(row["runs"][1:], start=1):
            if first is None or later is None:
                continue
            versus = row["versus"][i] or {}
            for expr, limit in effect_limits:
                drop = 1 - later["speedup"] / first["speedup"]
                if drop <= limit:
                    continue
                _breach(f"{row['case']} run #{i} vs #0: {expr}: the optimization's speedup fell from "
                        f"{fmt_ratio(first['speedup'])}x to {fmt_ratio(later['speedup'])}x ({drop:.0%} lower)",
                        versus, failures, notes)
    return failures


def _statistic_problem(check: Any, first: dict[str, Any], later: dict[str, Any], i: int) -> str | None:
    """Why a --fail-if statistic cannot be compared between two sides' latency records (None: it can; '': both are
    0, no change): one run lacks it (pytest-benchmark's check reads a missing one as an infinite regression),
    or a percentage of the first run's 0 (a stddev or iqr of identical samples) is undefined."""
    field = check.field
    a, b = first.get(field), later.get(field)
    if not is_number(a):
        return f"run #0 has no {field}"
    if not is_number(b):
        return f"run #{i} has no {field}"
    if isinstance(check, PercentageRegressionCheck) and a == 0:
        return "" if b == 0 else (f"run #0's {field} is 0: a percentage of it is undefined; use an absolute "
                                  f"threshold ({field}:SECONDS)")
    return None


def _breach(line: str, versus: dict[str, Any], failures: list[str], notes: list[str] | None) -> None:
    """A threshold breach fails the gate unless its comparison says "no significant difference" (then a note);
    an inconclusive one fails with the advice to re-measure."""
    if versus.get("verdict") == "no significant difference":
        if notes is not None:
            notes.append(f"{line}; within noise (no significant difference): not a failure")
        return
    if versus.get("verdict") == "inconclusive":
        line += f"; and the comparison is inconclusive ({versus.get('reason')}): re-measure"
    failures.append(line)


def _percent(expr: str) -> float:
    """speedup:N% -> N / 100; InputError otherwise."""
    value = expr.split(":", 1)[1]
    try:
        if not value.endswith("%") or not 0 < float(value[:-1]) < math.inf:  # nan fails both
            raise ValueError
        return float(value[:-1]) / 100
    except ValueError:
        raise InputError(f"bad --fail-if expression {expr!r}: speedup takes a positive percentage, e.g. speedup:10%",
                         field="fail-if") from None


def main(paths: list[str | Path], out: str | Path | None = None, fail_if: list[str] | tuple[str, ...] = (),
         price_per_hour: float | None = None, prices: dict[str, float] | None = None,
         allow_missing: bool = False) -> int:
    """Print the comparison table, write the HTML page to `out`, and return 1 if the gate fails: a --fail-if check
    is breached, or (whenever --fail-if is given) a case or check that was ok in the first run is broken or
    missing in a later one (`health_failures`)."""
    result = compare([Path(p) for p in paths], price_per_hour, prices)
    notes: list[str] = []
    failures = check_fail_if(result, fail_if, notes)
    if fail_if:
        failures = health_failures(result, allow_missing) + failures
    print(format_table(result), end="")
    if out is not None:
        write_text(out, render_compare(result))
        print(f"wrote {out}")
    for n in notes:
        print(f"NOTE: {n}")
    for f in failures:
        print(f"FAIL: {f}")
    return 1 if failures else 0
