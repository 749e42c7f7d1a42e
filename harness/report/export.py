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

from harness.core.cost import device_name
from harness.core.errors import InputError
from harness.core.results import SCHEMA_VERSION, finite, read_json, validate, write_text
from harness.report.formatting import (
    HEADLINE,
    SIDES,
    fmt_headline,
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
                    "harness_case": case["id"], "harness_side": side, "kind": case["kind"],
                    "workload": case["workload"], "plugins": case["plugins"] if side == "optimized" else
                    case.get("baseline_plugins", []), "timer": m.get("timer"), "throughput": s.get("throughput"),
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


def _side_from_bench(bench: dict[str, Any]) -> dict[str, Any]:
    stats, info = bench["stats"], bench.get("extra_info") or {}
    latency = {k: stats.get(k) for k in ("median", "mean", "stddev", "min", "max", "q1", "q3", "iqr", "rounds",
                                         "iterations", "outliers", "data")}
    latency["data"] = latency["data"] or []
    return {"latency": latency, "throughput": info.get("throughput") or {}, "compile_s": info.get("compile_s"),
            "memory": info.get("memory") or {}, "energy": info.get("energy"), "extra": info.get("extra") or {},
            "info": info.get("info") or {}}


def from_pytest_benchmark(data: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """A pytest-benchmark JSON document as a results dict: our exports regroup into their cases; a foreign
    benchmark becomes a one-sided case (only `optimized`) named by its fullname."""
    where = None if path is None else str(path)
    if not isinstance(data.get("benchmarks"), list):
        raise InputError("pytest-benchmark JSON without a benchmarks list", path=where, field="benchmarks")
    cases: dict[str, dict[str, Any]] = {}
    for i, bench in enumerate(data["benchmarks"]):
        if not isinstance(bench, dict) or not isinstance(bench.get("stats"), dict):
            raise InputError("benchmark without stats", path=where, field=f"benchmarks[{i}]")
        info = bench.get("extra_info") or {}
        cid = info.get("harness_case") or bench.get("fullname") or bench.get("name")
        case = cases.setdefault(cid, {
            "id": cid, "workload": info.get("workload") or {"name": bench.get("group") or "", "type": "", "spec": {}},
            "kind": info.get("kind", "benchmark"), "plugins": [], "baseline_plugins": [], "status": "ok",
            "error": None, "measurement": {"timer": (bench.get("options") or {}).get("timer")},
            "comparison": info.get("comparison"), "checks": info.get("checks") or [],
            "warnings": info.get("warnings") or []})
        key = "baseline" if info.get("harness_case") and info.get("harness_side") == "baseline" else "optimized"
        case[key] = _side_from_bench(bench)
    mi = data.get("machine_info") or {}
    env = mi.get("harness_environment") or {
        "hostname": mi.get("node"), "os": f"{mi.get('system')}-{mi.get('release')}", "python": mi.get("python_version"),
        "cpu": {"model": (mi.get("cpu") or {}).get("brand_raw") or mi.get("processor")}, "device": "unknown"}
    return {"schema_version": SCHEMA_VERSION, "run_id": Path(path).stem if path else "pytest-benchmark",
            "imported_from": "pytest-benchmark", "started": data.get("datetime"), "finished": data.get("datetime"),
            "status": "complete", "suite": {"name": Path(path).name if path else "pytest-benchmark"},
            "environment": env, "cases": list(cases.values())}


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
                row.update(throughput_unit=units[0], optimized_throughput=c["optimized"]["throughput"].get(units[0]),
                           baseline_throughput=(c.get("baseline") or {}).get("throughput", {}).get(units[0]))
            for side, key in SIDES:
                if not isinstance(c.get(key), dict):
                    continue
                row[f"{side}_median_s"] = c[key]["latency"]["median"]
                row[f"{side}_tokens_per_s"] = (c[key].get("throughput") or {}).get("tokens_per_s")
                row[f"{side}_peak_bytes"] = (c[key].get("memory") or {}).get("peak_bytes")
                extra = c[key].get("extra") or {}
                row.update({f"{side}_{k}": extra.get(k) for k, _ in HEADLINE if extra.get(k) is not None})
        w.writerow(row)
    return buf.getvalue()


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(results: dict[str, Any]) -> str:
    """A PR-ready summary: one row per case with verdict, interval, throughput, memory and checks."""
    results = validate(results)
    env = results.get("environment") or {}
    lines = [f"### {_md(results['suite'].get('name'))}: {_md(device_name(env))}", "",
             f"run `{_md(results.get('run_id'))}`, torch {_md(env.get('torch'))}, commit "
             f"`{_md((env.get('git') or {}).get('commit'))}`. Speedup = baseline time / optimized time (>1 = faster), "
             "95% bootstrap interval.", "",
             "| case | verdict | speedup [95% CI] | throughput baseline → optimized "
             "| TTFT, TPOT, goodput, MFU/MBU where known | memory | checks |",
             "|---|---|---|---|---|---|---|"]
    failed = []
    for c in results["cases"]:
        if timed_alone(c):
            rates = "<br>".join(f"{fmt_num(x)} {unit_label(u)}" for u, x in c["optimized"]["throughput"].items())
            lines.append(f"| {_md(c['id'])} | timed alone | median {fmt_time(c['optimized']['latency']['median'])} | "
                         f"{rates or 'n/a'} | {_md(fmt_headline(c, '<br>')) or '—'} | n/a | — |")
            continue
        if not measured(c) or not isinstance(c.get("comparison"), dict) or c["comparison"].get("speedup") is None:
            failed.append(c)
            continue
        cmp, checks = c["comparison"], c.get("checks") or []
        ci = f" [{cmp['ci95'][0]:.2f}, {cmp['ci95'][1]:.2f}]" if cmp.get("ci95") else ""
        base, opt = c["baseline"]["throughput"], c["optimized"]["throughput"]
        rates = "<br>".join(f"{fmt_num(base.get(u))} → {fmt_num(opt.get(u))} {unit_label(u)}"
                            for u in throughput_units(c)) or "n/a"
        passed = sum(1 for x in checks if x.get("passed"))
        lines.append(f"| {_md(c['id'])} | {verdict_text(cmp)} | {cmp['speedup']:.2f}×{ci} | {rates} | "
                     f"{_md(fmt_headline(c, '<br>')) or '—'} | {fmt_saved(memory_saved(c))} | "
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
