"""The HTML report: a pure function of results.json (docs/results.md). No torch, no network, no external files.

The page is one self-contained file: Jinja2 templates from harness/report/templates with autoescaping (every string
from a suite, plugin or error shows as text), charts drawn by matplotlib (harness/report/charts.py) as inline SVG with
text kept as <text> elements, a few lines of inline JS to sort tables, and a Content-Security-Policy that blocks
any load. The Summary opens with a forest plot of every measured case's speedup and interval; each case shows its
per-pair ratios with the pairs timed on a busy machine marked. Numbers are formatted by harness.report.formatting
(shared with compare and export).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from harness.core import capacity, cost, stats
from harness.core.results import finite, load, validate, write_text
from harness.report import charts, serving
from harness.report.charts import COLORS, MEMORY_CATEGORIES  # noqa: F401  (re-exported)
from harness.report.formatting import (
    SIDES,
    flatten,
    fmt_bytes,
    fmt_extra,
    fmt_headline,
    fmt_interval,
    fmt_num,
    fmt_pct,
    fmt_ratio,
    fmt_saved,
    fmt_time,
    fmt_usd,
    fmt_warmup,
    is_number,
    measured,
    memory_resolved,
    memory_saved,
    short_reason,
    throughput_units,
    timed_alone,
    unit_label,
    verdict_class,
    verdict_text,
)

TEMPLATES = Path(__file__).parent / "templates"
# ---- what the charts and tables show ----

def comparison_band(cases: list[dict[str, Any]]) -> tuple[float, float]:
    """The equivalence band of the measured cases (the most common one). Files that did not record theirs
    predate the min_effect band: their verdicts used twice min_effect."""
    bands = []
    for c in cases:
        cmp = c.get("comparison") or {}
        band = cmp.get("equivalence") or stats.equivalence_band(2 * (cmp.get("min_effect") or stats.MIN_EFFECT))
        bands.append((round(band[0], 6), round(band[1], 6)))
    return max(bands, key=bands.count) if bands else stats.equivalence_band()


def forest(cases: list[dict[str, Any]]) -> str:
    """The Summary's forest plot: one row per measured case, speedup and interval, busy cases hollow."""
    rows = []
    measured_cases = [c for c in cases if measured(c)]
    for c in measured_cases:
        cmp = c.get("comparison") or {}
        ci, s = cmp.get("ci95"), cmp.get("speedup")
        text = fmt_interval(s, ci, "×")
        rows.append({"label": c["id"], "speedup": s, "ci": ci, "verdict": cmp.get("verdict") or "n/a",
                     "busy": bool(measure_view(c)["busy"]), "text": text})
    return charts.forest_plot(rows, comparison_band(measured_cases))


def pairs_chart(case: dict[str, Any], salt: str) -> str:
    """A case's per-pair ratios (per-round in older files), busy pairs ringed."""
    cmp = case.get("comparison") or {}
    m = case.get("measurement") or {}
    load = m.get("foreign_load") or {}
    unit = "pair" if cmp.get("per_pair") else "round"
    ratios = cmp.get("per_pair") or cmp.get("per_round") or []
    threshold = load.get("threshold")
    flagged = [threshold is not None and x is not None and x >= threshold for x in load.get("per_pair") or []]
    orders = m.get("order") if isinstance(m.get("order"), list) else None
    return charts.pair_chart(ratios, cmp.get("speedup"), cmp.get("ci95"), flagged if unit == "pair" else [],
                             orders, unit, threshold, salt, band=cmp.get("equivalence"))


def measure_view(case: dict[str, Any]) -> dict[str, Any]:
    """How a case was timed, for the tables, from new files (paired blocks) and older ones (rounds) alike."""
    m = case.get("measurement") or {}
    load = m.get("foreign_load") or {}
    order, blocks = m.get("order"), m.get("block_samples") or {}
    paired = "pairs" in m or "design" in m
    return {"design": m.get("design") or (order if isinstance(order, str) else None),
            "count": m.get("pairs") if paired else m.get("rounds"), "count_unit": "pairs" if paired else "rounds",
            "orders": ", ".join(f"{order.count(o)}× {o}" for o in sorted(set(order))) if isinstance(order, list)
            else None,
            "block_samples": " / ".join(str(blocks.get(key, "?")) for _, key in SIDES) if blocks else None,
            "stopped_by": m.get("stopped_by"), "foreign_cpu": load.get("foreign_cpu"), "steal": load.get("steal"),
            "loadavg": load.get("loadavg_1m"), "cores": load.get("cores"), "threshold": load.get("threshold"),
            "gpu_others": load.get("gpu_other_processes"), "busy": bool(load.get("busy")), "load_recorded": bool(load),
            "reason": load.get("reason"), "advice": load.get("advice")}


def batch_curves(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput vs batch for each set of ok cases that differ only in spec.batch (a sweep over batch)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in cases:
        workload = c.get("workload") or {}
        spec = dict(workload.get("spec") or {})
        if not measured(c) or not (is_number(spec.get("batch")) and spec["batch"] > 0):  # a hand edit: no curve
            continue
        spec.pop("batch")
        key = json.dumps([workload.get("name"), spec, c.get("plugins"), c.get("baseline_plugins")], sort_keys=True)
        groups.setdefault(key, []).append(c)
    curves = []
    for i, group in enumerate(groups.values()):
        group.sort(key=lambda c: c["workload"]["spec"]["batch"])
        batches = [c["workload"]["spec"]["batch"] for c in group]
        if len(set(batches)) < 2:
            continue
        common = [u for u in throughput_units(group[0])
                  if all(c[key]["throughput"].get(u) for c in group for _, key in SIDES)]
        if not common:
            continue
        unit = common[0]
        series = {label: [c[key]["throughput"][unit] for c in group] for label, key in SIDES}
        curves.append({"ids": [c["id"] for c in group], "unit": unit,
                       "svg": charts.batch_chart(batches, series, unit_label(unit), f"batch{i}")})
    return curves


# ---- the page ----

def environment(jinja_env: jinja2.Environment | None = None) -> jinja2.Environment:
    """The Jinja2 environment with autoescaping on and the formatting filters registered."""
    env = jinja_env or jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(speedup=fmt_ratio, time=fmt_time, warmup=fmt_warmup, bytes=fmt_bytes, num=fmt_num, pct=fmt_pct,
                       usd=fmt_usd,
                       verdict=verdict_text, vclass=verdict_class, short_reason=short_reason, saved=fmt_saved,
                       unit=unit_label, extra=lambda x, k: fmt_extra(k, x), capacity_value=capacity.side_value,
                       serving_headline=lambda c: serving.headline(c.get("serving")),
                       searches=serving.searches_of,
                       tojson_compact=lambda v: json.dumps(v, sort_keys=True))
    return env


def case_view(case: dict[str, Any], index: int, price: float | None) -> dict[str, Any]:
    """What the template shows for one case: the case plus charts, memory saved, checks and costs."""
    ok = measured(case)
    checks = case.get("checks") or []
    passed = sum(1 for c in checks if c.get("passed"))
    status = str(case.get("status"))
    if timed_alone(case):
        status = "ok (timed alone)"
    elif case.get("status") == "ok" and not ok:
        status = "ok (no measurements recorded)"
    elif ok and passed < len(checks):
        status = "ok, invariant FAILED"
    alone_peak = None
    if timed_alone(case):
        mem = case["optimized"].get("memory") or {}
        unresolved = mem.get("source") == "cpu_vmhwm" and (mem.get("peak_bytes") or 0) < stats.CPU_MEMORY_RESOLUTION
        alone_peak = "n/a (under measurement resolution)" if unresolved else fmt_bytes(mem.get("peak_bytes"))
    view = {"case": case, "anchor": f"case-{index}", "ok": ok, "status": status, "alone": timed_alone(case),
            "alone_peak": alone_peak, "headline": fmt_headline(case, "\n") if ok or timed_alone(case) else "",
            "clean": ok and passed == len(checks),
            "checks_passed": passed, "checks_total": len(checks), "units": throughput_units(case) if ok else [],
            "saved": memory_saved(case) if ok else None,
            "memory_resolved": ok and memory_resolved(case), "mv": measure_view(case), "pairs_svg": "",
            "latency_svg": "", "memory_svg": "", "costs": {},
            "capacity_svg": charts.capacity_chart(case["capacity"], f"cap{index}") if case.get("capacity") else "",
            "serving_svg": charts.serving_chart(case["serving"], f"srv{index}") if case.get("serving") else "",
            "sweep_svg": charts.sweep_chart(case["serving"], f"swp{index}")
            if (case.get("serving") or {}).get("sweep") else "",
            "extra_keys": [], "info_keys": [], "categories": [], "recipe": recipe_view(case, index)}
    if view["recipe"]:
        view["status"] = "ok (recipe)" if passed == len(checks) else "ok, a configuration's invariant FAILED"
    if ok:
        view["pairs_svg"] = pairs_chart(case, f"pairs{index}")
        samples = {label: (case[key].get("latency") or {}).get("data") for label, key in SIDES}
        view["latency_svg"] = charts.latency_chart({k: v for k, v in samples.items() if v}, f"lat{index}")
        view["memory_svg"] = charts.memory_chart(
            [(label, case[key]["memory"]) for label, key in SIDES if case[key].get("memory")], f"mem{index}")
        view["costs"] = {label: cost.side_cost(case[key], price) for label, key in SIDES}
        first = ("ttft_s", "tpot_s", "itl_p50_s", "itl_p90_s", "itl_p99_s", "itl_max_s", "mfu", "hfu", "mbu",
                 "model_tflops", "regime")
        keys = {k for _, key in SIDES for k in (case[key].get("extra") or {})}
        view["extra_keys"] = [k for k in first if k in keys] + sorted(keys - set(first))
        view["info_keys"] = sorted({k for _, key in SIDES for k in (case[key].get("info") or {})})
        present = {k for _, key in SIDES for k in ((case[key].get("memory") or {}).get("breakdown") or {})}
        view["categories"] = [k for k in MEMORY_CATEGORIES if k in present] + sorted(present - set(MEMORY_CATEGORIES))
    return view


def recipe_view(case: dict[str, Any], index: int) -> dict[str, Any] | None:
    """What the template shows of a recipe (harness.core.recipe, docs/recipes.md): each configuration with its
    objective, memory, invariant and speedup, on the front or not; the effects and interactions; the charts."""
    rec = case.get("recipe")
    if case.get("status") != "ok" or not isinstance(rec, dict) or not isinstance(rec.get("configs"), dict):
        return None
    front = [p.get("config") for p in rec.get("front") or [] if isinstance(p, dict)]
    best = rec.get("best") if isinstance(rec.get("best"), dict) else {}
    configs = [{"label": label, **c} for label, c in rec["configs"].items() if isinstance(c, dict)]
    configs.sort(key=lambda c: -(c.get("objective") or 0))
    effects = rec.get("effects") if isinstance(rec.get("effects"), dict) else {}
    terms = [t for t in (effects.get("main") or []) + (effects.get("interactions") or []) if isinstance(t, dict)]
    rows = [{"label": ("× " if len(t.get("factors") or []) > 1 else "") + str(t.get("term")),
             "speedup": t.get("factor") if is_number(t.get("factor")) else None,
             "ci": t.get("ci95") if isinstance(t.get("ci95"), list) and len(t["ci95"]) == 2 else None,
             "verdict": t.get("verdict"), "busy": False,
             "text": f"{fmt_ratio(t.get('factor'))}× {t.get('verdict')}"} for t in terms]
    unit = str(rec.get("objective") or "objective")
    budget = rec.get("budget_gb")
    points = [{"config": c["label"], "objective": c.get("objective"), "peak_bytes": c.get("peak_bytes"),
               "valid": bool(c.get("valid"))} for c in configs]
    return {"configs": configs, "front": front, "best": best, "terms": terms, "unit": unit,
            "design": rec.get("design") if isinstance(rec.get("design"), dict) else {},
            "skipped": [s for s in rec.get("skipped") or [] if isinstance(s, dict)],
            "effects_svg": charts.forest_plot(rows, None, f"eff{index}", xlabel="main effect: speedup of turning it "
                                              "on · interaction (×): speedup(both) ÷ product of each alone "
                                              "(log scale; right of 1 = faster / super-additive)"),
            "pareto_svg": charts.pareto_chart(points, front, best.get("config"),
                                              budget * 2**30 if is_number(budget) else None, unit_label(unit),
                                              f"par{index}")}


def render_report(results: dict[str, Any], price_per_hour: float | None = None,
                  prices: dict[str, float] | None = None) -> str:
    """One self-contained HTML page for a results dict (docs/results.md)."""
    results = validate(finite(results)[0])  # as written: a NaN in memory is null in the file
    env = results.get("environment") or {}
    price = cost.price_for(env, price_per_hour, prices)
    cases = [case_view(c, i, price and price[0]) for i, c in enumerate(results["cases"])]
    warnings = [("run", w) for w in results.get("warnings") or [] if isinstance(w, str)]
    warnings += [(c.get("id"), w) for c in results["cases"] for w in c.get("warnings") or []]
    if results.get("status") != "complete":
        warnings.insert(0, ("run", f"the run is {results.get('status')!r}: some cases may be missing"))
    return environment().get_template("report.html").render(
        r=results, suite=results.get("suite") or {}, env=env, env_rows=flatten(env), cases=cases, warnings=warnings,
        device=cost.device_name(env), price=price,
        breakeven=cost.training_vs_inference(results, price and price[0]),
        curves=batch_curves(results["cases"]), forest=forest(results["cases"]), sides=SIDES,
        sized=[v for v in cases if v["case"].get("capacity")], recipes=[v for v in cases if v["recipe"]],
        categories=MEMORY_CATEGORIES,
    )


def write_report(results_path: str | Path, out_path: str | Path | None = None,
                 price_per_hour: float | None = None, prices: dict[str, float] | None = None) -> Path:
    """Render results.json to report.html beside it (or `out_path`), atomically; return the path written."""
    results_path = Path(results_path)
    results = load(results_path)
    out = Path(out_path) if out_path else results_path.with_name("report.html")
    write_text(out, render_report(results, price_per_hour, prices))
    return out
