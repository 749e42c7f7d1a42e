"""Formatting of results for people: times, bytes, percentages, verdicts, the headline figures of a case, and
what a case's record says about itself (measured, timed alone, memory resolved). Used by the report, compare and
export; no torch, no templates."""

from __future__ import annotations

import math
from typing import Any

from harness.core import capacity, stats
from harness.report import serving

SIDES = (("baseline", "baseline"), ("optimized", "optimized"))  # (label, key in the case)
# Below this, a CPU peak (VmHWM delta) is allocator and page noise, not the step's memory: the worker leaves
# comparison.memory_ratio null there (harness/core/worker.py); older files that carry a ratio are judged the same way.


def fmt_time(s: float | None) -> str:
    """Seconds as s / ms / µs with 3 significant digits (anything else as text: `_not_number`)."""
    if not is_number(s):
        return _not_number(s)
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _not_number(x: Any) -> str:
    """What a formatter of numbers shows for anything else: 'n/a' for null, NaN and infinity, else the value as
    text (a results file's free-form fields: an extra metric that is a string)."""
    if x is None or isinstance(x, float):
        return "n/a"
    return str(x)


def fmt_warmup(w: Any) -> str:
    """Warm-up time: one number, or one per side ({"baseline": s, "optimized": s}, as the worker records it)."""
    if isinstance(w, dict):
        return ", ".join(f"{k} {fmt_time(v)}" for k, v in w.items())
    return fmt_time(w)


def fmt_bytes(b: float | None) -> str:
    """Bytes in binary units (GiB = 2**30)."""
    if not is_number(b):
        return _not_number(b)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.0f} B"


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A number with `digits` significant digits and thousands separators for large values."""
    if not is_number(x):
        return _not_number(x)
    return f"{x:,.0f}" if abs(x) >= 10**digits else f"{x:.{digits}g}"


def fmt_pct(x: float | None) -> str:
    """A fraction as a percentage."""
    return f"{100 * x:.1f}%" if is_number(x) else _not_number(x)


def fmt_usd(x: float | None) -> str:
    """US dollars with enough digits for tiny per-step costs."""
    if not is_number(x):
        return _not_number(x)
    return f"${x:,.2f}" if x >= 1 else f"${x:.3g}"


def fmt_extra(key: str, x: Any) -> str:
    """A derived metric by its name's suffix: *_bytes_s bandwidth, *_bytes size, *_s time, mfu/hfu/mbu percent."""
    if not is_number(x):
        return _not_number(x)
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
    few = {k for e in extras.values() for k in e.get("too_few_requests") or []}  # a served trace's percentiles
    return [(key, f"{label} (too few requests)" if key in few else label, extras["baseline"].get(key),
             extras["optimized"].get(key)) for key, label in HEADLINE
            if any(isinstance(e.get(key), (int, float)) for e in extras.values())]


def fmt_headline(case: dict[str, Any], sep: str = "; ") -> str:
    """'TTFT 1.20 ms → 0.90 ms; TPOT ...' (one value for a case timed alone); '' when the case has none."""
    if isinstance((case.get("recipe") or {}).get("configs"), dict):
        from harness.core import recipe

        return sep.join(recipe.headline(case))
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
    if word == "faster" and is_number(s) and s > 0:
        return f"{fmt_ratio(s)}× faster"
    if word == "slower" and is_number(s) and s > 0:
        return f"{fmt_ratio(1 / s)}× slower"
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


def one_line(record: dict[str, Any]) -> str:
    """A case's verdict in one line, for the progress display."""
    if record["status"] != "ok":
        first = (record.get("error") or "").splitlines()[0][:160] if record.get("error") else ""
        return f"{record['status'].upper()}: {first}"
    checks = record.get("checks", [])
    passed = sum(ch["passed"] for ch in checks)
    load = ((record.get("measurement") or {}).get("foreign_load") or {}).get("foreign_cpu")
    load_text = f", foreign CPU {load:.0%}" if load is not None else ""
    if isinstance((record.get("recipe") or {}).get("configs"), dict):
        rec = record["recipe"]
        return (f"recipe: {len(rec['configs'])} configurations over {rec.get('rounds')} rounds, "
                f"{passed}/{len(checks)} checks passed{load_text}")
    c = record["comparison"]
    if record.get("alone"):
        lat = record["optimized"]["latency"]
        return (f"timed alone: median {lat['median'] * 1e3:.3g} ms, p90 {lat['p90'] * 1e3:.3g} ms over "
                f"{lat['rounds']} samples{load_text}")
    word = c["verdict"] + (f" ({c['reason']})" if c.get("reason") else "")
    figure = f"speedup {fmt_speedup(c)}" + (f" over {c['pairs']} pairs" if c.get("pairs") else "")
    return f"{word}: {figure}{load_text}, checks {passed}/{len(checks)} passed"


def process_line(record: dict[str, Any]) -> str:
    """One process of a case, for the progress display: its own estimate (no verdict: that is the case's)."""
    if record["status"] != "ok":
        return one_line(record)
    c = record.get("comparison") or {}
    load = ((record.get("measurement") or {}).get("foreign_load") or {}).get("foreign_cpu")
    if record.get("recipe_timing"):
        timing = record["recipe_timing"]
        load_text = f", foreign CPU {load:.0%}" if load is not None else ""
        return (f"{len(timing['configs'])} configurations, {len(timing['rounds'])} rounds{load_text} "
                f"({record.get('duration_s') or 0:.1f} s)")
    figure = (f"{fmt_ratio(c['speedup'])}x over {c.get('pairs')} pairs" if c.get("speedup") else
              f"median {record['optimized']['latency']['median'] * 1e3:.3g} ms")
    return f"{figure}" + (f", foreign CPU {load:.0%}" if load is not None else "") + \
        f" ({record.get('duration_s') or 0:.1f} s)"


def fmt_ratio(x: Any, digits: int = 2) -> str:
    """A ratio (speedup, time or memory ratio) with enough digits at any size, the one rule of every ratio shown:
    `digits` decimals from 0.1 to 100 ('1.62'), whole above ('1,900'), `digits` significant digits below
    ('0.00053': a 1,900x slowdown, never '0.00'); 'n/a' for what is not a positive finite number (never 'inf' or
    'nan')."""
    if not is_number(x) or x <= 0:
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}" if x >= 0.1 else f"{x:#.{digits}g}"


def is_number(x: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_interval(x: Any, ci: Any, mark: str = "x") -> str:
    """'1.62x [1.55, 1.70]' (`fmt_ratio` throughout), or 'n/a' when there is no ratio."""
    if not is_number(x) or x <= 0:
        return "n/a"
    return f"{fmt_ratio(x)}{mark}" + (f" [{fmt_ratio(ci[0])}, {fmt_ratio(ci[1])}]" if ci else "")


def fmt_speedup(comparison: dict[str, Any]) -> str:
    """'1.62x [1.55, 1.70]', or 'n/a' when nothing was compared."""
    return fmt_interval(comparison.get("speedup"), comparison.get("ci95"))
