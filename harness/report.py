"""The HTML report: a pure function of results.json (docs/results.md). No torch, no network, no external files.

The page is one self-contained file: Jinja2 templates from harness/templates with autoescaping (every string
from a suite, plugin or error shows as text), charts drawn by matplotlib (harness/charts.py) as inline SVG with
text kept as <text> elements, a few lines of inline JS to sort tables, and a Content-Security-Policy that blocks
any load. The Summary opens with a forest plot of every measured case's speedup and interval; each case shows its
per-pair ratios with the pairs timed on a busy machine marked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from harness import capacity, charts, cost, serving, stats
from harness.charts import COLORS, MEMORY_CATEGORIES  # noqa: F401  (re-exported)
from harness.results import load, validate, write_text

TEMPLATES = Path(__file__).parent / "templates"
SIDES = (("baseline", "baseline"), ("optimized", "optimized"))  # (label, key in the case)
# Below this, a CPU peak (VmHWM delta) is allocator and page noise, not the step's memory: the worker leaves
# comparison.memory_ratio null there (harness/worker.py); older files that carry a ratio are judged the same way.


# ---- formatting (also used by compare and export) ----

def fmt_time(s: float | None) -> str:
    """Seconds as s / ms / µs with 3 significant digits."""
    if s is None:
        return "n/a"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def fmt_warmup(w: Any) -> str:
    """Warm-up time: one number, or one per side ({"baseline": s, "optimized": s}, as the worker records it)."""
    if isinstance(w, dict):
        return ", ".join(f"{k} {fmt_time(v)}" for k, v in w.items())
    return fmt_time(w)


def fmt_bytes(b: float | None) -> str:
    """Bytes in binary units (GiB = 2**30)."""
    if b is None:
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A number with `digits` significant digits and thousands separators for large values."""
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return f"{x:,.0f}" if abs(x) >= 10**digits else f"{x:.{digits}g}"


def fmt_pct(x: float | None) -> str:
    """A fraction as a percentage."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


def fmt_usd(x: float | None) -> str:
    """US dollars with enough digits for tiny per-step costs."""
    if x is None:
        return "n/a"
    return f"${x:,.2f}" if x >= 1 else f"${x:.3g}"


def fmt_extra(key: str, x: Any) -> str:
    """A derived metric by its name's suffix: *_bytes_s bandwidth, *_bytes size, *_s time, mfu/hfu/mbu percent."""
    if x is None or isinstance(x, (str, bool)):
        return "n/a" if x is None else str(x)
    if key.endswith("bytes_s"):
        return f"{fmt_bytes(x)}/s"
    if key.endswith("bytes"):
        return fmt_bytes(x)
    if key.endswith("_s") and "_per_s" not in key:
        return fmt_time(x)
    if key in ("mfu", "hfu", "mbu"):
        return fmt_pct(x)
    return fmt_num(x)


HEADLINE = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("ttft_p50_s", "TTFT p50"), ("ttft_p99_s", "TTFT p99"),
            ("tpot_p50_s", "TPOT p50"), ("goodput_requests_per_s", "goodput req/s"), ("mfu", "MFU"), ("mbu", "MBU"))


def headline(case: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """The derived figures a case leads with beside its throughput, as (key, label, baseline, optimized): TTFT and
    TPOT for a generation, TTFT / TPOT percentiles and goodput for a served trace, MFU / MBU where known. The
    report's summary, the CSV and the Markdown exports all show these."""
    extras = {key: (case.get(key) or {}).get("extra") or {} for _, key in SIDES}
    return [(key, label, extras["baseline"].get(key), extras["optimized"].get(key)) for key, label in HEADLINE
            if any(isinstance(e.get(key), (int, float)) for e in extras.values())]


def fmt_headline(case: dict[str, Any], sep: str = "; ") -> str:
    """'TTFT 1.20 ms → 0.90 ms; TPOT ...' (one value for a case timed alone); '' when the case has none."""
    parts = []
    for key, label, base, opt in headline(case):
        pair = fmt_extra(key, opt) if timed_alone(case) else f"{fmt_extra(key, base)} → {fmt_extra(key, opt)}"
        parts.append(f"{label} {pair}")
    parts += [capacity.headline(case["capacity"])] if case.get("capacity") else []
    return sep.join(parts + ([serving.headline(case["serving"])] if case.get("serving") else []))


def verdict_text(comparison: dict[str, Any]) -> str:
    """'1.62× faster', '1.32× slower' (time ratio, so it reads naturally), 'no significant difference' or
    'inconclusive' (its reason, comparison["reason"], is shown beside it); any other verdict as recorded."""
    s, word = comparison.get("speedup"), comparison.get("verdict")
    if word == "faster" and s:
        return f"{s:.2f}× faster"
    if word == "slower" and s:
        return f"{1 / s:.2f}× slower"
    return str(word) if word else "n/a"


def verdict_class(word: Any) -> str:
    """The CSS class of a verdict: faster, slower, inconclusive, or nsd (no significant difference, n/a...); an
    effect that is larger / smaller on another machine reads as faster / slower."""
    word = {"larger": "faster", "smaller": "slower"}.get(word, word)
    return word if word in ("faster", "slower", "inconclusive") else "nsd"


def short_reason(reason: str | None, width: int = 50) -> str:
    """A reason short enough for a table cell: its first clause, cut at its last colon within `width` when
    longer ('interval [0.87, 1.05] too wide', 'first run: machine busy'); the page has the whole one too."""
    head = (reason or "").split("; ")[0]
    if len(head) > width:
        cut = head.rfind(":", 0, width)
        head = head[:cut] if cut > 0 else head[:width - 1] + "…"
    return head


def throughput_units(case: dict[str, Any]) -> list[str]:
    """The throughput keys (``<unit>_per_s``) either side of a case reports, tokens first, then as recorded.

    Units are whatever the workload declares (tokens, samples, sequences, requests, items...), so nothing here
    assumes a particular one."""
    keys = [k for _, key in SIDES for k in ((case.get(key) or {}).get("throughput") or {})]
    return sorted(dict.fromkeys(keys), key=lambda k: k != "tokens_per_s")


def unit_label(key: str) -> str:
    """'tokens_per_s' -> 'tokens/s'."""
    return key.removesuffix("_per_s") + "/s"


def measured(case: dict[str, Any]) -> bool:
    """An ok case with both sides recorded (the report shows measurements only for these)."""
    return case.get("status") == "ok" and all(isinstance(case.get(key), dict) for _, key in SIDES)


def timed_alone(case: dict[str, Any]) -> bool:
    """An ok case with `baseline: none`: only its optimized side was timed, there is no comparison."""
    return case.get("status") == "ok" and bool(case.get("alone")) and isinstance(case.get("optimized"), dict)


def memory_resolved(case: dict[str, Any]) -> bool:
    """False when the memory difference of a case is not a measurement: the worker left memory_ratio null, or
    both CPU peaks lie under the RSS resolution."""
    if "memory_ratio" in (case.get("comparison") or {}) and case["comparison"]["memory_ratio"] is None:
        return False
    mems = [(case.get(key) or {}).get("memory") or {} for _, key in SIDES]
    cpu = all(m.get("source") == "cpu_vmhwm" for m in mems)
    return not (cpu and max((m.get("peak_bytes") or 0) for m in mems) < stats.CPU_MEMORY_RESOLUTION)


def memory_saved(case: dict[str, Any]) -> tuple[float, float] | None:
    """(bytes saved by the optimized side, fraction of the baseline peak), negative when it uses more.

    None when a peak is missing or when the worker declared the ratio unresolved (comparison.memory_ratio null,
    e.g. both CPU peaks under the RSS resolution): a difference of two unresolved peaks is not a saving."""
    if not memory_resolved(case):
        return None
    base = ((case.get("baseline") or {}).get("memory") or {}).get("peak_bytes")
    opt = ((case.get("optimized") or {}).get("memory") or {}).get("peak_bytes")
    if not base or opt is None:
        return None
    return base - opt, (base - opt) / base


def fmt_saved(saved: tuple[float, float] | None) -> str:
    """'saves 30 MiB (10.0%)' or 'uses 20 MiB more (5.0%)'."""
    if saved is None:
        return "n/a"
    b, frac = saved
    if b >= 0:
        return f"saves {fmt_bytes(b)} ({fmt_pct(frac)})"
    return f"uses {fmt_bytes(-b)} more ({fmt_pct(-frac)})"


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists as dotted keys, for the environment table."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        out = {}
        for i, v in enumerate(d):
            out.update(flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: d}


# ---- loading ----

# ---- what the charts and tables show ----

def comparison_band(cases: list[dict[str, Any]]) -> tuple[float, float]:
    """The equivalence band of the measured cases (the most common one; from min_effect in older files)."""
    bands = []
    for c in cases:
        cmp = c.get("comparison") or {}
        band = cmp.get("equivalence") or stats.equivalence_band(cmp.get("min_effect") or stats.MIN_EFFECT)
        bands.append((round(band[0], 6), round(band[1], 6)))
    return max(bands, key=bands.count) if bands else stats.equivalence_band()


def forest(cases: list[dict[str, Any]]) -> str:
    """The Summary's forest plot: one row per measured case, speedup and interval, busy cases hollow."""
    rows = []
    measured_cases = [c for c in cases if measured(c)]
    for c in measured_cases:
        cmp = c.get("comparison") or {}
        ci, s = cmp.get("ci95"), cmp.get("speedup")
        text = "n/a" if s is None else f"{s:.2f}×" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
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
        spec = dict(c["workload"].get("spec") or {})
        if not measured(c) or "batch" not in spec:
            continue
        spec.pop("batch")
        key = json.dumps([c["workload"]["name"], spec, c.get("plugins"), c.get("baseline_plugins")], sort_keys=True)
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
    env.filters.update(time=fmt_time, warmup=fmt_warmup, bytes=fmt_bytes, num=fmt_num, pct=fmt_pct, usd=fmt_usd,
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
            "extra_keys": [], "info_keys": [], "categories": []}
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


def render_report(results: dict[str, Any], price_per_hour: float | None = None,
                  prices: dict[str, float] | None = None) -> str:
    """One self-contained HTML page for a results dict (docs/results.md)."""
    results = validate(results)
    env = results.get("environment") or {}
    price = cost.price_for(env, price_per_hour, prices)
    cases = [case_view(c, i, price and price[0]) for i, c in enumerate(results["cases"])]
    warnings = [(c.get("id"), w) for c in results["cases"] for w in c.get("warnings") or []]
    if results.get("status") != "complete":
        warnings.insert(0, ("run", f"the run is {results.get('status')!r}: some cases may be missing"))
    return environment().get_template("report.html").render(
        r=results, env=env, env_rows=flatten(env), cases=cases, warnings=warnings,
        device=cost.device_name(env), price=price,
        breakeven=cost.training_vs_inference(results, price and price[0]),
        curves=batch_curves(results["cases"]), forest=forest(results["cases"]), sides=SIDES,
        sized=[v for v in cases if v["case"].get("capacity")],
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
