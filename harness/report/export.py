"""Exports of a results file: pytest-benchmark JSON, CSV, a Markdown summary; and the pytest-benchmark importer.

The pytest-benchmark JSON follows that package's own writer (`pytest_benchmark.plugin.pytest_benchmark_generate_json`
and `Metadata.as_dict`): one benchmark per side of each ok case, stats from `pytest_benchmark.stats.Stats` over
the per-call samples (seconds) plus `data` and `iterations`, harness metrics in `extra_info`, so that
`pytest-benchmark compare` reads it and `harness compare` reads it back (or any pytest-benchmark file).
"""

from __future__ import annotations

import csv
import io
import json
import platform
from pathlib import Path
from typing import Any

import pytest_benchmark
from pytest_benchmark.stats import Stats

from harness.core import results_schema as rs
from harness.core.cost import device_name
from harness.core.errors import InputError
from harness.core.results import SCHEMA_VERSION, finite, read_json, validate, write_text
from harness.report.formatting import (
    HEADLINE,
    SIDES,
    fmt_headline,
    fmt_interval,
    fmt_num,
    fmt_saved,
    fmt_time,
    measured,
    memory_saved,
    throughput_units,
    timed_alone,
    unit_label,
    verdict_text,
)

FORMATS = ("pytest-benchmark", "csv", "markdown")
NOT_COMPARABLE = "not comparable"  # the status of an imported benchmark whose times cannot be compared


def bench_name(case_id: str, side: str) -> str:
    """The benchmark name of one side of a case, as pytest-benchmark lists it."""
    return f"{case_id}[{side}]"


def machine_info(env: dict[str, Any]) -> dict[str, Any]:
    """pytest-benchmark's machine_info keys filled from our environment block, which rides along whole."""
    cpu = env.get("cpu") or {}
    return {
        "node": env.get("hostname"), "processor": cpu.get("model"), "machine": platform.machine(),
        "python_compiler": "", "python_implementation": "CPython",
        "python_implementation_version": env.get("python"), "python_version": env.get("python"),
        "python_build": [], "release": env.get("os"), "system": (env.get("os") or "").split("-")[0],
        "cpu": {"brand_raw": cpu.get("model"), "count": cpu.get("cores_logical")},
        "harness_environment": env,
    }


def to_pytest_benchmark(results: dict[str, Any]) -> dict[str, Any]:
    """The run as a pytest-benchmark JSON document (what `--benchmark-json` writes)."""
    results = validate(results)
    env = results.get("environment") or {}
    git = env.get("git") or {}
    benchmarks = []
    for case in results["cases"]:
        if not (measured(case) or timed_alone(case)):
            continue
        m = case.get("measurement") or {}
        for side, key in SIDES:
            s = case.get(key) or {}
            if not (s.get("latency") or {}).get("data"):
                continue  # pytest-benchmark stats need samples
            stats = Stats()
            for x in s["latency"]["data"]:
                stats.update(x)
            out = stats.as_dict()
            out.update(data=list(s["latency"]["data"]), iterations=s["latency"].get("iterations", 1))
            benchmarks.append({
                "group": case["id"], "name": bench_name(case["id"], side),
                "fullname": f"harness::{bench_name(case['id'], side)}",
                "params": {"side": side}, "param": side,
                "options": {"disable_gc": False, "timer": m.get("timer", "wall_sync"),
                            "min_rounds": m.get("pairs", m.get("rounds")), "max_time": None, "min_time": None,
                            "warmup": m.get("warmup_s")},
                "extra_info": {
                    "harness_case": case["id"], "harness_side": side, "kind": case.get("kind"),
                    "workload": case.get("workload") or {}, "plugins": (case.get("plugins") if side == "optimized"
                                                                        else case.get("baseline_plugins")) or [],
                    "timer": m.get("timer"), "throughput": s.get("throughput"),
                    "memory": s.get("memory"), "energy": s.get("energy"), "extra": s.get("extra"),
                    "info": s.get("info"), "compile_s": s.get("compile_s"), "comparison": case.get("comparison"),
                    "checks": case.get("checks"), "warnings": case.get("warnings"),
                },
                "stats": out,
            })
    return {
        "machine_info": machine_info(env),
        "commit_info": {"id": git.get("commit", "unknown"), "time": None, "author_time": None,
                        "dirty": bool(git.get("dirty")), "project": "harness",
                        "branch": git.get("branch", "(unknown)")},
        "benchmarks": benchmarks,
        "datetime": results.get("started"),
        "version": pytest_benchmark.__version__,
    }


STAT_TIMES = ("median", "mean", "min", "max", "q1", "q3")  # of a pytest-benchmark stats record, seconds
BENCH_STATS = rs.record({**{k: rs.number() for k in (*STAT_TIMES, "stddev", "iqr")}, "rounds": rs.COUNT,
                         "iterations": rs.number(), "outliers": rs.text(),
                         "data": rs.list_of(rs.number(null=False))}, null=False)
BENCH_INFO = rs.record({
    "harness_case": rs.text(), "harness_side": rs.text(), "kind": rs.text(),
    "workload": rs.one_of(rs.WORKLOAD, rs.text(), what="an object or a name"), "spec": rs.map_of(rs.anything),
    "throughput": rs.map_of(rs.AMOUNT), "memory": rs.MEMORY, "energy": rs.ENERGY, "extra": rs.map_of(rs.anything),
    "info": rs.map_of(rs.anything), "compile_s": rs.number(0), "comparison": rs.COMPARISON,
    "checks": rs.list_of(rs.CHECK), "warnings": rs.STRINGS})
BENCH = rs.record({"name": rs.text(), "fullname": rs.text(), "group": rs.SCALAR, "stats": BENCH_STATS,
                   "extra_info": BENCH_INFO, "options": rs.map_of(rs.anything)}, required=("stats",), null=False)
BENCH_FILE = rs.record({"benchmarks": rs.list_of(BENCH, null=False), "machine_info": rs.map_of(rs.anything),
                        "commit_info": rs.map_of(rs.anything), "datetime": rs.SCALAR}, required=("benchmarks",),
                       null=False)


def not_comparable(stats: dict[str, Any]) -> str | None:
    """Why a pytest-benchmark stats record cannot be compared (a median that is missing, a time or sample that is
    zero or negative: pytest-benchmark writes 0.0 for work under its timer's resolution), or None."""
    if stats.get("median") is None:
        return "no median"
    bad = [f"{k} {stats[k]:g} s" for k in STAT_TIMES if stats.get(k) is not None and stats[k] <= 0]
    samples = [x for x in stats.get("data") or [] if x <= 0]
    if samples:
        bad.append(f"{len(samples)} of its {len(stats['data'])} samples {samples[0]:g} s or less")
    return f"{', '.join(bad)}: a time must be positive" if bad else None


def _side_from_bench(bench: dict[str, Any]) -> dict[str, Any]:
    stats, info = bench["stats"], bench.get("extra_info") or {}
    latency = {k: stats.get(k) for k in ("median", "mean", "stddev", "min", "max", "q1", "q3", "iqr", "rounds",
                                         "iterations", "outliers", "data")}
    latency["data"] = latency["data"] or []
    return {"latency": latency, "throughput": info.get("throughput") or {}, "compile_s": info.get("compile_s"),
            "memory": info.get("memory") or {}, "energy": info.get("energy"), "extra": info.get("extra") or {},
            "info": info.get("info") or {}}


def _workload(info: dict[str, Any], bench: dict[str, Any]) -> dict[str, Any]:
    """A benchmark's workload record: ours (an export), a name with its spec (harness.pytest_plugin), or the
    benchmark's group."""
    workload = info.get("workload")
    if isinstance(workload, dict):
        return workload
    return {"name": workload or str(bench.get("group") or ""), "type": "", "spec": info.get("spec") or {}}


def check_pytest_benchmark(data: Any, where: str | None) -> None:
    """InputError naming the file and the field (``benchmarks[3].stats.median``) for what the importer cannot
    read: a NaN or infinity, a wrong type, a benchmark with no name."""
    try:
        found = rs.first_nonfinite(data)
        if found is not None:
            raise InputError("expected a finite number, got NaN or Infinity", field=rs.dotted(found))
        BENCH_FILE(data, "")
        for i, bench in enumerate(data["benchmarks"]):
            if not ((bench.get("extra_info") or {}).get("harness_case") or bench.get("fullname") or bench.get("name")):
                raise InputError("missing (no extra_info.harness_case, fullname or name)",
                                 field=f"benchmarks[{i}].name")
    except InputError as exc:
        exc.path = where
        raise


def from_pytest_benchmark(data: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """A pytest-benchmark JSON document as a results dict: our exports regroup into their cases; a foreign
    benchmark becomes a one-sided case (only `optimized`) named by its fullname. A benchmark whose times cannot
    be compared (`not_comparable`: a 0.0 s benchmark) becomes a case of status "not comparable" saying why, so
    that compare lists it and its gate fails, never an infinite ratio."""
    where = None if path is None else str(path)
    check_pytest_benchmark(data, where)
    cases: dict[str, dict[str, Any]] = {}
    for i, bench in enumerate(data["benchmarks"]):
        info = bench.get("extra_info") or {}
        cid = info.get("harness_case") or bench.get("fullname") or bench.get("name")
        case = cases.setdefault(cid, {
            "id": cid, "workload": _workload(info, bench),
            "kind": info.get("kind", "benchmark"), "plugins": [], "baseline_plugins": [], "status": "ok",
            "error": None, "measurement": {"timer": (bench.get("options") or {}).get("timer")},
            "comparison": info.get("comparison"), "checks": info.get("checks") or [],
            "warnings": info.get("warnings") or []})
        key = "baseline" if info.get("harness_case") and info.get("harness_side") == "baseline" else "optimized"
        if key in case:
            raise InputError(f"a second benchmark named {rs.shown(cid)}", path=where, field=f"benchmarks[{i}]")
        case[key] = _side_from_bench(bench)
        reason = not_comparable(bench["stats"])
        if reason:
            case.update(status=NOT_COMPARABLE, error=f"benchmarks[{i}] {rs.shown(bench.get('name') or cid)}: {reason}")
    for case in cases.values():
        if case["status"] != "ok":
            for key in ("baseline", "optimized", "comparison", "measurement"):
                case.pop(key, None)
    mi = data.get("machine_info") or {}
    env = mi.get("harness_environment") if isinstance(mi.get("harness_environment"), dict) else {
        "hostname": mi.get("node"), "os": f"{mi.get('system')}-{mi.get('release')}", "python": mi.get("python_version"),
        "cpu": {"model": (mi.get("cpu") or {}).get("brand_raw") if isinstance(mi.get("cpu"), dict)
                else mi.get("processor")}, "device": "unknown"}
    return validate({"schema_version": SCHEMA_VERSION, "run_id": Path(path).stem if path else "pytest-benchmark",
                     "imported_from": "pytest-benchmark", "started": data.get("datetime"),
                     "finished": data.get("datetime"), "status": "complete",
                     "suite": {"name": Path(path).name if path else "pytest-benchmark"},
                     "environment": env, "cases": list(cases.values())}, path)


def load_run(path: str | Path) -> dict[str, Any]:
    """Read a harness results.json or a pytest-benchmark JSON file as a results dict; InputError otherwise."""
    data = read_json(path)
    if isinstance(data, dict) and "benchmarks" in data and "machine_info" in data:
        return from_pytest_benchmark(data, path)
    return validate(data, path)


CSV_FIELDS = ("id", "kind", "status", "verdict", "speedup", "ci95_low", "ci95_high", "baseline_median_s",
              "optimized_median_s", "throughput_unit", "baseline_throughput", "optimized_throughput",
              "baseline_tokens_per_s", "optimized_tokens_per_s", "baseline_peak_bytes",
              "optimized_peak_bytes", "memory_ratio",
              *(f"{side}_{key}" for key, _ in HEADLINE for side in ("baseline", "optimized")),
              "checks_passed", "checks_total", "warnings", "error")


def to_csv(results: dict[str, Any]) -> str:
    """One row per case, failed ones included with empty measurements; the headline figures (TTFT, TPOT,
    serving percentiles, goodput, MFU, MBU; `harness.report.formatting.HEADLINE`) in seconds or fractions, empty
    where the case has none."""
    results = validate(results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for c in results["cases"]:
        checks = c.get("checks") or []
        row = {"id": c["id"], "kind": c.get("kind"), "status": c.get("status"), "error": c.get("error") or "",
               "checks_passed": sum(1 for x in checks if x.get("passed")), "checks_total": len(checks),
               "warnings": len(c.get("warnings") or [])}
        if measured(c) or timed_alone(c):
            cmp = c.get("comparison") or {}
            ci = cmp.get("ci95") or [None, None]
            row.update(verdict=cmp.get("verdict"), speedup=cmp.get("speedup"), ci95_low=ci[0], ci95_high=ci[1],
                       memory_ratio=cmp.get("memory_ratio"))
            units = throughput_units(c)
            if units:
                rates = {label: (c.get(key) or {}).get("throughput") or {} for label, key in SIDES}
                row.update(throughput_unit=units[0], optimized_throughput=rates["optimized"].get(units[0]),
                           baseline_throughput=rates["baseline"].get(units[0]))
            for side, key in SIDES:
                if not isinstance(c.get(key), dict):
                    continue
                row[f"{side}_median_s"] = c[key]["latency"]["median"]
                row[f"{side}_tokens_per_s"] = (c[key].get("throughput") or {}).get("tokens_per_s")
                row[f"{side}_peak_bytes"] = (c[key].get("memory") or {}).get("peak_bytes")
                extra = c[key].get("extra") or {}
                row.update({f"{side}_{k}": extra.get(k) for k, _ in HEADLINE if extra.get(k) is not None})
        w.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet runs a cell that starts so as a formula (OWASP)


def _cell(value: Any) -> Any:
    """A CSV cell: text that a spreadsheet would run as a formula ('=cmd|...', '@SUM(...)') gets a leading "'"
    (OWASP's advice: shown as text, the value whole); numbers as they are."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_START) else value


def _md(s: Any) -> str:
    """User text in a Markdown table cell: one line, its pipes escaped, HTML shown as text (a Markdown renderer
    passes raw HTML through)."""
    text = str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ").replace("`", "\\`")


def _md_lines(text: str) -> str:
    """Several lines of user text in one Markdown cell, separated by <br>."""
    return "<br>".join(_md(line) for line in text.splitlines())


def to_markdown(results: dict[str, Any]) -> str:
    """A PR-ready summary: one row per case with verdict, interval, throughput, memory and checks."""
    results = validate(results)
    env = results.get("environment") or {}
    lines = [f"### {_md((results.get('suite') or {}).get('name'))}: {_md(device_name(env))}", "",
             f"run `{_md(results.get('run_id'))}`, torch {_md(env.get('torch'))}, commit "
             f"`{_md((env.get('git') or {}).get('commit'))}`. Speedup = baseline time / optimized time (>1 = faster), "
             "95% bootstrap interval.", "",
             "| case | verdict | speedup [95% CI] | throughput baseline → optimized "
             "| TTFT, TPOT, goodput, MFU/MBU where known | memory | checks |",
             "|---|---|---|---|---|---|---|"]
    failed = []
    for c in results["cases"]:
        if timed_alone(c):
            rates = "<br>".join(f"{fmt_num(x)} {_md(unit_label(u))}" for u, x in
                                (c["optimized"].get("throughput") or {}).items())
            headline = _md_lines(fmt_headline(c, "\n")) or "—"
            lines.append(f"| {_md(c['id'])} | timed alone | median {fmt_time(c['optimized']['latency']['median'])} | "
                         f"{rates or 'n/a'} | {headline} | n/a | — |")
            continue
        if not measured(c) or not isinstance(c.get("comparison"), dict) or c["comparison"].get("speedup") is None:
            failed.append(c)
            continue
        cmp, checks = c["comparison"], c.get("checks") or []
        base, opt = c["baseline"].get("throughput") or {}, c["optimized"].get("throughput") or {}
        rates = "<br>".join(f"{fmt_num(base.get(u))} → {fmt_num(opt.get(u))} {_md(unit_label(u))}"
                            for u in throughput_units(c)) or "n/a"
        passed = sum(1 for x in checks if x.get("passed"))
        interval = fmt_interval(cmp["speedup"], cmp.get("ci95"), "×")
        headline = _md_lines(fmt_headline(c, "\n")) or "—"
        lines.append(f"| {_md(c['id'])} | {_md(verdict_text(cmp))} | {interval} | {rates} | {headline} | "
                     f"{fmt_saved(memory_saved(c))} | "
                     f"{passed}/{len(checks)}{'' if passed == len(checks) else ' ❌'} |")
    if failed:
        lines += ["", "Not measured:", ""]
        lines += [f"- {_md(c['id'])}: **{_md(c.get('status'))}** {_md(c.get('error') or '')}" for c in failed]
    nwarn = sum(len(c.get("warnings") or []) for c in results["cases"])
    if nwarn:
        lines += ["", f"{nwarn} warning(s): see the HTML report."]
    return "\n".join(lines) + "\n"


def main(path: str | Path, fmt: str, out: str | Path | None = None) -> int:
    """Export the results file at `path` in `fmt` to `out` (stdout when None); 0 on success."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}", field="format")
    results = load_run(path)
    if fmt == "pytest-benchmark":
        text = json.dumps(finite(to_pytest_benchmark(results))[0], indent=2, allow_nan=False) + "\n"
    elif fmt == "csv":
        text = to_csv(results)
    else:
        text = to_markdown(results)
    if out is None:
        print(text, end="")
    else:
        write_text(out, text)
    return 0
