"""Replication check: do repeated runs of one suite agree with each other?

Given the results of N runs of the same suite (`results.json` files, as `harness run` writes them), for every case
measured (status ok, with a speedup) in at least two runs:

- each run's estimate, 95 % interval and verdict;
- pairings: for every ordered pair of runs (i, j), i != j, whether run i's interval contains run j's estimate.
  Over all cases this gives the headline coverage figure. If each run's interval were an honest 95 % interval
  and the runs independent with equal spread, run j's estimate would fall in run i's interval about 83 % of the
  time (P(|Z| < 1.96 / sqrt 2)), not 95 %: the estimate being tested is noisy too;
- verdict changes: a case is *contradictory* when one run says "faster" and another "slower" or "no significant
  difference", or one says "slower" and another "faster" or "no significant difference". A change to or from
  "inconclusive" is allowed (the harness may withhold a verdict) but counted and shown;
- per run: the foreign CPU range over its cases (so a reader can see the runs were quiet), its wall time and the
  processes each case was timed in (K, `harness run --repeat`).

`replicate(results_list)` computes a JSON-able dict, `format_report(dict)` a plain-text table. No torch; used by
`scripts/replicate-bench`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.core.errors import InputError
from harness.core.results import load
from harness.report.formatting import fmt_ratio

CONFIDENT = ("faster", "slower")
DECIDED = ("faster", "slower", "no significant difference")
HONEST_COVERAGE = 0.834  # P(|Z| < 1.96 / sqrt(2)): two independent estimates, each with an honest 95 % interval


def load_results(paths: list[Path | str]) -> list[dict[str, Any]]:
    """Read harness results files through the one reader (`harness.core.results.load`: InputError naming the file
    and the field for a missing, malformed or damaged one)."""
    return [load(p) for p in paths]


def case_entry(case: dict[str, Any] | None) -> dict[str, Any]:
    """One run's view of a case: {"usable", "status", "speedup", "ci95", "verdict", "foreign_cpu", "busy", "k"}.
    Usable means status ok with a speedup; a missing case has status "missing"."""
    if case is None:
        return {"usable": False, "status": "missing"}
    cmp = case.get("comparison") or {}
    measurement = case.get("measurement") or {}
    load = measurement.get("foreign_load") or {}
    ci = cmp.get("ci95")
    return {"usable": case.get("status") == "ok" and cmp.get("speedup") is not None,
            "status": case.get("status"), "speedup": cmp.get("speedup"),
            "ci95": list(ci) if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci else None,
            "verdict": cmp.get("verdict"), "foreign_cpu": load.get("foreign_cpu"), "busy": bool(load.get("busy")),
            "k": int(measurement.get("processes_repeated") or 1)}


def pairings(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every ordered pair (i, j), i != j, of usable entries where run i has an interval: does it contain run j's
    estimate? Runs are numbered from 1. A run without an interval (ci95 null) covers nothing and is not counted."""
    out = []
    for i, a in enumerate(entries):
        if not a["usable"] or a["ci95"] is None:
            continue
        lo, hi = a["ci95"]
        for j, b in enumerate(entries):
            if i != j and b["usable"]:
                out.append({"interval_of": i + 1, "estimate_of": j + 1, "covered": lo <= b["speedup"] <= hi})
    return out


def is_contradictory(verdicts: list[str | None]) -> bool:
    """True when a "faster" meets a "slower" or "no significant difference", or a "slower" meets a "faster" or
    "no significant difference": two different decided verdicts (one of them is then always confident)."""
    return len(set(verdicts) & set(DECIDED)) >= 2


def changed_inconclusive(verdicts: list[str | None]) -> bool:
    """True when the verdict went to or from "inconclusive" (some runs inconclusive, others not)."""
    return "inconclusive" in verdicts and len(set(verdicts)) > 1


def analyse_case(cid: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One case over all runs: its entries, pairings with covered/total/share, and its verdict changes."""
    pairs = pairings(entries)
    covered = sum(p["covered"] for p in pairs)
    verdicts = [e["verdict"] for e in entries if e["usable"]]
    return {"id": cid, "runs": entries, "pairings": pairs, "covered": covered, "total": len(pairs),
            "share": covered / len(pairs) if pairs else None, "contradictory": is_contradictory(verdicts),
            "changed_inconclusive": changed_inconclusive(verdicts), "verdicts": sorted(set(map(str, verdicts)))}


def run_summary(results: dict[str, Any], label: str) -> dict[str, Any]:
    """One run at a glance: wall time, foreign CPU range over its cases, busy cases, processes per case (K)."""
    entries = [case_entry(c) for c in results["cases"]]
    loads = [e["foreign_cpu"] for e in entries if e.get("foreign_cpu") is not None]
    ks = sorted({e["k"] for e in entries if e["status"] == "ok"})
    return {"label": label, "run_id": results.get("run_id"), "wall_s": results.get("wall_s"),
            "cases": len(entries), "ok": sum(e["status"] == "ok" for e in entries),
            "foreign_cpu": [min(loads), max(loads)] if loads else None,
            "busy_cases": sum(e["busy"] for e in entries if e["status"] != "missing"), "processes": ks}


def replicate(results_list: list[dict[str, Any]], labels: list[str] | None = None) -> dict[str, Any]:
    """The replication check over runs of one suite (see the module docstring). Returns {"runs", "cases",
    "skipped", "coverage" {"covered", "total", "share", "honest"}, "contradictory", "changed_inconclusive"}."""
    if len(results_list) < 2:
        raise InputError("the replication check needs at least two runs")
    labels = labels or [f"run {i + 1}" for i in range(len(results_list))]
    by_id = [{c["id"]: c for c in r["cases"]} for r in results_list]
    ids = list(dict.fromkeys(c["id"] for r in results_list for c in r["cases"]))
    cases, skipped = [], []
    for cid in ids:
        entries = [case_entry(m.get(cid)) for m in by_id]
        if sum(e["usable"] for e in entries) >= 2:
            cases.append(analyse_case(cid, entries))
        else:
            skipped.append({"id": cid, "statuses": [e["status"] for e in entries]})
    covered, total = sum(c["covered"] for c in cases), sum(c["total"] for c in cases)
    return {"runs": [run_summary(r, label) for r, label in zip(results_list, labels)], "cases": cases,
            "skipped": skipped,
            "coverage": {"covered": covered, "total": total, "share": covered / total if total else None,
                         "honest": HONEST_COVERAGE},
            "contradictory": [c["id"] for c in cases if c["contradictory"]],
            "changed_inconclusive": [c["id"] for c in cases if c["changed_inconclusive"]]}


def fmt_entry(e: dict[str, Any]) -> str:
    """A run's cell: "1.06x [1.02, 1.08] faster", or the case's status when it has no speedup."""
    if not e["usable"]:
        return str(e["status"] if e["status"] != "ok" else "no speedup")
    ci = f" [{fmt_ratio(e['ci95'][0])}, {fmt_ratio(e['ci95'][1])}]" if e["ci95"] else " [no interval]"
    return f"{fmt_ratio(e['speedup'])}x{ci} {e['verdict']}"


def pct(x: float) -> str:
    """A share as "57 %"."""
    return f"{x * 100:.0f} %"


def fmt_share(covered: int, total: int) -> str:
    """ "51 of 90 pairings (57 %)"."""
    return f"{covered} of {total} pairings ({pct(covered / total)})" if total else "0 pairings"


def fmt_run(r: dict[str, Any]) -> str:
    """A run's summary line: wall time, foreign CPU range, busy cases, K."""
    wall = f"{r['wall_s']:.0f} s" if isinstance(r.get("wall_s"), (int, float)) else "n/a"
    fc = r["foreign_cpu"]
    load = f"{pct(fc[0])} to {pct(fc[1])}" if fc else "n/a"
    k = ",".join(map(str, r["processes"])) or "n/a"
    return (f"{r['label']}: wall {wall}, foreign CPU {load}, busy cases {r['busy_cases']}, "
            f"processes per case K={k}, {r['ok']}/{r['cases']} cases ok")


def table(d: dict[str, Any]) -> list[str]:
    """The per-case table: id, one cell per run, the case's coverage, and a flag for verdict changes."""
    header = ["case"] + [r["label"] for r in d["runs"]] + ["coverage", ""]
    rows = [header]
    for c in d["cases"]:
        flag = "CONTRADICTORY" if c["contradictory"] else ("inconclusive changed" if c["changed_inconclusive"] else "")
        rows.append([c["id"]] + [fmt_entry(e) for e in c["runs"]] + [f"{c['covered']}/{c['total']}", flag])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def format_report(d: dict[str, Any]) -> str:
    """The replication check as plain text: runs, the per-case table, the coverage headline, contradictions."""
    cov = d["coverage"]
    lines = ["== runs"] + [fmt_run(r) for r in d["runs"]] + ["", "== cases"] + table(d)
    if d["skipped"]:
        lines += ["", "not compared (usable in fewer than 2 runs):"]
        lines += [f"  {s['id']}: " + ", ".join(map(str, s["statuses"])) for s in d["skipped"]]
    lines += ["", f"coverage: {fmt_share(cov['covered'], cov['total'])}: run i's interval contains run j's "
                  f"estimate (an honest 95 % interval gives about {pct(cov['honest'])})"]
    lines.append(f"contradictory verdicts: {len(d['contradictory'])} of {len(d['cases'])} cases")
    by_id = {c["id"]: c for c in d["cases"]}
    lines += [f"  {cid}: " + " / ".join(by_id[cid]["verdicts"]) for cid in d["contradictory"]]
    lines.append(f"verdict changed to/from inconclusive (allowed): {len(d['changed_inconclusive'])} of "
                 f"{len(d['cases'])} cases")
    lines += [f"  {cid}: " + " / ".join(by_id[cid]["verdicts"]) for cid in d["changed_inconclusive"]]
    return "\n".join(lines)
