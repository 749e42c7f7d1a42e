"""The report's charts: matplotlib (Agg) figures as inline SVG, text kept as <text>, deterministic ids.

Each function takes plain data (harness/report/page.py picks it out of results.json) and returns one <svg> element,
or "" when there is nothing to draw. matplotlib is imported inside the functions, so importing this module
costs nothing.
"""

from __future__ import annotations

import inspect
import io
import math
import random
from typing import Any

from harness.core.stats import percentile
from harness.report.formatting import fmt_ratio

MEMORY_CATEGORIES = ("weights", "gradients", "optimizer_states", "activations", "kv_cache")
COLORS = {"baseline": "#7a7a7a", "optimized": "#1f6fb4"}
VERDICT_COLORS = {"faster": "#176e1d", "slower": "#b3261e", "no significant difference": "#7a7a7a",
                  "inconclusive": "#d9730d", "larger": "#176e1d", "smaller": "#b3261e",  # larger/smaller: effects
                  "super-additive": "#176e1d", "sub-additive": "#b3261e", "no significant interaction": "#7a7a7a"}
OTHER_COLOR = "#7a7a7a"  # a verdict of no known kind (n/a)
FLAG_COLOR = "#b3261e"  # pairs timed while the machine was busy


MAX_POINTS = 2000  # dots a chart draws per series: a run of 200,000 samples a side made a 43 MB report


def thin_step(n: int) -> int:
    """Draw every k-th of n points so that at most MAX_POINTS are drawn (1: all)."""
    return max(1, math.ceil(n / MAX_POINTS))


def thinned(step: int, total: int, what: str) -> str:
    """'every 100th of 200,000 samples'."""
    suffix = "th" if 10 <= step % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(step % 10, "th")
    return f"every {step}{suffix} of {total:,} {what}"


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _svg(fig: Any, salt: str) -> str:
    """A matplotlib Figure as an inline <svg> element (text as text, deterministic ids, no metadata)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _figure(w: float, h: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=96)
    fig.patch.set_alpha(0)
    return fig


def _time_unit(values: list[float]) -> tuple[str, float]:
    top = max(values)
    return ("s", 1.0) if top >= 1 else ("ms", 1e3) if top >= 1e-3 else ("µs", 1e6)


def ratio_ticks(lo: float, hi: float) -> list[float]:
    """Readable tick positions for a log axis of ratios between lo and hi (both > 0): 1-2-5 decades on a wide
    range, evenly spaced round values on a narrow one (0.9, 0.95, 1, 1.05...)."""
    from matplotlib.ticker import MaxNLocator

    if hi / lo < 2.5:
        return [float(t) for t in MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if lo <= t <= hi]
    ticks: list[float] = []
    for subs in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [float(f"{m * 10.0**e:.6g}") for e in decades for m in subs if lo <= m * 10.0**e <= hi]
        if len(ticks) >= 4:
            break
    return ticks


def _ratio_axis(ax: Any, which: str, lo: float, hi: float) -> None:
    """Log scale on ax's `which` ("x" or "y") axis from lo to hi, "0.5×"-style labels, no minor ticks."""
    from matplotlib.ticker import NullLocator

    pad = max((hi / lo) ** 0.08, 1.02)
    lo, hi = lo / pad, hi * pad
    getattr(ax, f"set_{which}scale")("log")
    getattr(ax, f"set_{which}lim")(lo, hi)
    ticks = ratio_ticks(lo, hi)
    getattr(ax, f"set_{which}ticks")(ticks, [f"{t:g}×" for t in ticks])
    getattr(ax, f"{which}axis").set_minor_locator(NullLocator())


def _plain(text: Any) -> str:
    """User text (a case id, a suite's names) as matplotlib draws it literally: a '$' would start mathtext, and a
    malformed formula ('$\\frac{1$') is an exception, not a label."""
    return str(text).replace("$", r"\$")


def _short(label: str, width: int = 72) -> str:
    """A long label cut in the middle (the workload's name and the plugin's stay readable)."""
    if len(label) <= width:
        return label
    keep = (width - 1) // 2
    return f"{label[:keep]}…{label[-(width - 1 - keep):]}"


def forest_plot(rows: list[dict[str, Any]], band: tuple[float, float] | None, salt: str = "forest",
                xlabel: str = "speedup = baseline time ÷ optimized time (log scale; right of 1 = faster)") -> str:
    """Every case's speedup and 95% interval on one log axis, coloured by verdict, busy cases hollow.

    rows: {"label", "speedup" (or None), "ci" ([lo, hi] or None), "verdict", "busy", "text"} in page order;
    band: the equivalence band shaded around 1 (None: not drawn). Each row's marker group gets the SVG id
    forest-<i>-<verdict>[-busy] so a reader (or a test) can find it."""
    if not rows:
        return ""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    n = len(rows)
    fig = _figure(7.0, 0.95 + 0.3 * n)
    ax = fig.add_subplot()
    values = [x for r in rows for x in [r["speedup"], *(r["ci"] or [])] if x and x > 0] + [1.0]
    if band:
        values += list(band)
        ax.axvspan(*band, color="#9a9a9a", alpha=0.18, linewidth=0)
    _ratio_axis(ax, "x", min(values), max(values))
    ax.axvline(1.0, color="#333333", linewidth=0.8)
    right = blended_transform_factory(ax.transAxes, ax.transData)
    for i, r in enumerate(rows):
        y = n - 1 - i  # the first case on top, as in the table
        color = VERDICT_COLORS.get(r["verdict"], OTHER_COLOR)
        if r["ci"]:
            ax.plot(r["ci"], [y, y], color=color, linewidth=2.2, solid_capstyle="butt")
        if r["speedup"]:
            dot = ax.scatter([r["speedup"]], [y], s=42, zorder=3, linewidths=1.6, edgecolors=color,
                             facecolors="white" if r["busy"] else color)
            dot.set_gid(f"forest-{i}-{str(r['verdict']).replace(' ', '-')}{'-busy' if r['busy'] else ''}")
        ax.text(1.015, y, r["text"], transform=right, va="center", fontsize=8, color=color)
    ax.set_yticks(range(n), [_plain(_short(r["label"])) + ("  · busy" if r["busy"] else "") for r in reversed(rows)],
                  fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(xlabel, fontsize=8)
    seen = list(dict.fromkeys(r["verdict"] for r in rows))
    handles: list[Any] = [Line2D([], [], color=VERDICT_COLORS.get(v, OTHER_COLOR), marker="o", linewidth=2.2,
                                 label=_plain(v)) for v in seen]
    if any(r["busy"] for r in rows):
        handles.append(Line2D([], [], color="#555555", marker="o", markerfacecolor="white", linestyle="none",
                              label="machine busy: verdict withheld"))
    if band:
        handles.append(Patch(color="#9a9a9a", alpha=0.18, label=f"no-difference band {band[0]:.2f}–{band[1]:.2f}"))
    ax.legend(handles=handles, fontsize=7, ncols=min(len(handles), 3), loc="lower center",
              bbox_to_anchor=(0.5, 1.0), frameon=False)
    return _svg(fig, salt)


def pair_chart(ratios: list[float], speedup: float | None, ci: list[float] | None, flagged: list[bool],
               orders: list[str] | None, unit: str, threshold: float | None, salt: str,
               band: list[float] | None = None) -> str:
    """The per-pair (or, in older files, per-round) ratios by index on a log axis, the speedup as a line, its
    interval as a band, and pairs timed while the machine was busy (`flagged`) ringed in red.

    orders: "BO"/"OB" per pair (which side ran first), drawn as circle/square; unit: "pair" or "round";
    band: the equivalence band, shaded grey where it meets the ratios' range (it shows why an interval is
    "too wide")."""
    ratios = [x for x in ratios if x and x > 0]
    if not ratios:
        return ""
    total, step = len(ratios), thin_step(len(ratios))
    orders = orders if orders and len(orders) >= total else None
    xs = list(range(1, total + 1))[::step]  # each drawn pair keeps its place in time order
    ratios, flagged = ratios[::step], flagged[:total][::step]
    orders = orders[:total][::step] if orders else None
    fig = _figure(5.4, 1.9)
    ax = fig.add_subplot()
    color = COLORS["optimized"]
    if ci:
        ax.axhspan(*ci, color=color, alpha=0.13, linewidth=0,
                   label=f"95% interval [{fmt_ratio(ci[0])}, {fmt_ratio(ci[1])}]")
    if speedup:
        ax.axhline(speedup, color=color, linewidth=1.2, label=f"speedup {fmt_ratio(speedup)}×")
    ax.axhline(1.0, color="#333333", linewidth=0.7, linestyle=":")
    for order, marker in (("BO", "o"), ("OB", "s")) if orders else ((None, "o"),):
        pick = [i for i in range(len(ratios)) if orders is None or orders[i] == order]
        if pick:
            label = f"{unit} ratio" if order is None else f"{unit} ratio, {order[0]} first"
            ax.scatter([xs[i] for i in pick], [ratios[i] for i in pick], s=16, marker=marker, color="#1d1d1f",
                       zorder=3, label=label)
    hot = [i for i, f in enumerate(flagged[:len(ratios)]) if f]
    if hot:
        ring = ax.scatter([xs[i] for i in hot], [ratios[i] for i in hot], s=110, facecolors="none",
                          edgecolors=FLAG_COLOR, linewidths=1.4, zorder=4,
                          label=f"foreign CPU ≥ {threshold:.0%}" if threshold is not None else "machine busy")
        ring.set_gid(f"{salt}-busy")
    span = ratios + list(ci or []) + ([speedup] if speedup else [])
    if band and band[0] < max(span) and band[1] > min(span):
        ax.axhspan(*band, color="#9a9a9a", alpha=0.18, linewidth=0, label="no-difference band")
    _ratio_axis(ax, "y", min(span), max(span))
    tick = 1 if len(xs) <= 20 else math.ceil(len(xs) / 20)
    ax.set_xticks(xs[::tick])
    ax.set_xlim(0.4, total + 0.6)
    ax.tick_params(labelsize=8)
    ax.set_xlabel(f"{unit} (time order)" + (f"; drawn: {thinned(step, total, unit + 's')}" if step > 1 else ""),
                  fontsize=8)
    ax.set_ylabel("baseline ÷ optimized", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return _svg(fig, salt)


def latency_chart(data: dict[str, list[float]], salt: str) -> str:
    """Each sample of both sides ({label: per-call seconds}) as a dot (jittered) over a box of the quartiles."""
    if not data:
        return ""
    every = sorted(x for xs in data.values() for x in xs)
    # a few stalls 20x the median would squash both boxes into one pixel: clip at 1.5x the 99th percentile
    limit = percentile(every, 0.99) * 1.5
    beyond = sum(1 for x in every if x > limit) if every[-1] > limit else 0
    unit, scale = _time_unit(every[:len(every) - beyond])
    fig = _figure(5.4, 1.7)
    ax = fig.add_subplot()
    rng = random.Random(0)
    drawn: list[str] = []
    # matplotlib 3.10 renamed vert=False to orientation="horizontal" (and deprecated the old spelling)
    horizontal = ({"orientation": "horizontal"} if "orientation" in inspect.signature(ax.boxplot).parameters
                  else {"vert": False})
    for y, (label, xs) in enumerate(reversed(data.items())):
        ax.boxplot([[x * scale for x in xs]], positions=[y], widths=0.5, showfliers=False,
                   medianprops={"color": COLORS[label], "linewidth": 2}, **horizontal)
        step = thin_step(len(xs))
        shown = [x for x in xs[::step] if x <= limit]  # the clipped ones would still widen the SVG's drawing
        if step > 1:
            drawn.append(f"{label}: {thinned(step, len(xs), 'samples')}")
        ax.scatter([x * scale for x in shown], [y + rng.uniform(-0.18, 0.18) for _ in shown], s=9, alpha=0.6,
                   color=COLORS[label], linewidths=0)
    ax.set_yticks(range(len(data)), list(reversed(data)))
    ax.set_xlabel(f"time per step ({unit})" + (f"; {beyond} samples above {limit * scale:.3g} not shown"
                                                    if beyond else "")
                  + (f"\ndots drawn: {'; '.join(drawn)} (the boxes: every sample)" if drawn else ""))
    if beyond:
        ax.set_xlim(right=limit * scale)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig, salt)


def memory_chart(sides: list[tuple[str, dict[str, Any]]], salt: str) -> str:
    """Stacked bars of the counted memory categories per side ([(label, SIDE.memory)]), the measured peak as a
    tick."""
    if not sides or not any(m.get("breakdown") for _, m in sides):
        return ""
    fig = _figure(5.4, 1.6)
    ax = fig.add_subplot()
    palette = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f")
    for y, (_, mem) in enumerate(reversed(sides)):
        left = 0.0
        for cat, color in zip(MEMORY_CATEGORIES, palette):
            v = (mem.get("breakdown") or {}).get(cat) or 0
            ax.barh(y, v / 2**20, left=left, color=color, label=cat if y == 0 else None, height=0.55)
            left += v / 2**20
        if mem.get("peak_bytes"):
            ax.plot([mem["peak_bytes"] / 2**20] * 2, [y - 0.35, y + 0.35], color="black", linewidth=2,
                    label="measured peak" if y == 0 else None)
    ax.set_yticks(range(len(sides)), [label for label, _ in reversed(sides)])
    ax.set_xlabel("MiB")
    ax.legend(fontsize=7, ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return _svg(fig, salt)


def batch_chart(batches: list[int], series: dict[str, list[float]], ylabel: str, salt: str) -> str:
    """Throughput against batch size (log2 axis), one line per side ({label: values})."""
    fig = _figure(5.2, 2.6)
    ax = fig.add_subplot()
    for label, values in series.items():
        ax.plot(batches, values, marker="o", color=COLORS[label], label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _svg(fig, salt)


def capacity_chart(record: dict[str, Any], salt: str) -> str:
    """A capacity search (harness.core.capacity): measured peak against the probed value (log2 axis), one line per
    side, filled where the probe fitted, hollow where it did not (an OOM has no peak: drawn at the budget line),
    the budget dashed and each side's largest fitting value ringed."""
    fig = _figure(5.2, 2.6)
    ax = fig.add_subplot()
    budget = record["budget_bytes"] / 2**20
    for key, label in (("baseline", "baseline"), ("optimized", "optimized")):
        side = record["sides"].get(key)
        if not side or not side.get("probes"):
            continue
        probes = side["probes"]
        xs = [p["value"] for p in probes]
        ys = [p["peak_bytes"] / 2**20 if p.get("peak_bytes") else budget for p in probes]
        ax.plot(xs, ys, color=COLORS[label], label=label, linewidth=1)
        for x, y, p in zip(xs, ys, probes):
            fitted = p.get("status") == "ok" and p.get("fits")
            ax.plot([x], [y], marker="o", color=COLORS[label], markerfacecolor=COLORS[label] if fitted else "white")
        if side.get("largest") in xs:  # a hand-edited largest among no probe is not ringed
            at = xs.index(side["largest"])
            ax.plot([xs[at]], [ys[at]], marker="o", markersize=13, markerfacecolor="none", color=COLORS[label])
    ax.axhline(budget, color="black", linestyle="--", linewidth=1, label="budget")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.set_xlabel(_plain(record["dim"]))
    ax.set_ylabel("peak (MiB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _svg(fig, salt)


def serving_chart(record: dict[str, Any], salt: str) -> str:
    """A serving search (harness.workloads.serve.search): each bounded latency metric against the achieved request
    throughput,
    one colour per side: every probe of every repeat (offline included) as a marker, each search's sustainable
    rate ringed, the sweep's points joined by a line (a single search's probes too), the SLO dashed; hollow
    markers where a percentile had too few requests."""
    from harness.report.serving import searches_of

    metrics = list(record["slo"])
    if not metrics:  # an SLO of no metric: nothing to draw against
        return ""
    fig = _figure(3.6 * len(metrics), 2.6)
    axes = fig.subplots(1, len(metrics), squeeze=False, gridspec_kw={"wspace": 0.5})[0]
    sweep = (record.get("sweep") or {}).get("points") or {}
    for ax, metric in zip(axes, metrics):
        for key in ("baseline", "optimized"):
            searches = searches_of(record["sides"].get(key) or {})
            probes = [p for s in searches for p in s.get("points", []) + [s.get("offline")]]
            sustained = {s.get("rate") for s in searches} - {None}
            # the sweep's points (one per offered rate) joined by a line; the searches' probes as markers only
            for points, line, ring in ((sweep.get(key, []), True, False), (probes, len(searches) == 1, True)):
                shown = sorted(((p["metrics"].get("requests_per_s"), p["metrics"].get(metric), p) for p in points
                                if p and p["status"] == "ok"), key=lambda t: t[0] if _is_number(t[0]) else 0)
                shown = [(x, y * 1e3, p) for x, y, p in shown if _is_number(x) and _is_number(y)]
                if line and shown:
                    ax.plot([x for x, _, _ in shown], [y for _, y, _ in shown], color=COLORS[key], linewidth=1)
                for x, y, p in shown:
                    ax.plot([x], [y], marker="o", color=COLORS[key], linestyle="none",
                            markerfacecolor="white" if metric in p["too_few_requests"] else COLORS[key])
                    if ring and p["rate"] in sustained:
                        ax.plot([x], [y], marker="o", markersize=13, markerfacecolor="none", color=COLORS[key])
            ax.plot([], [], color=COLORS[key], marker="o", label=key)
        ax.axhline(record["slo"][metric] * 1e3, color="black", linestyle="--", linewidth=1, label="SLO")
        ax.set_yscale("log")
        ax.set_xlabel("requests/s served")
        ax.set_ylabel(_plain(f"{metric.removesuffix('_s').replace('_', ' ')} (ms)"))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    return _svg(fig, salt)


def sweep_chart(record: dict[str, Any], salt: str) -> str:
    """A serving sweep (harness.workloads.serve.search): goodput (requests/s meeting the per-request SLO, solid) and
    requests/s served (dotted) against the offered rate, one colour per side; the dashed diagonal is
    served = offered."""
    sweep = record.get("sweep") or {}
    fig = _figure(5.2, 2.6)
    ax = fig.add_subplot()
    top = 0.0
    for key, points in (sweep.get("points") or {}).items():
        ok = [p for p in points if p["status"] == "ok" and _is_number(p.get("rate"))]
        xs = [p["rate"] for p in ok]
        for metric, style, label in (("goodput_requests_per_s", "-", "goodput"), ("requests_per_s", ":", "served")):
            ys = [p["metrics"].get(metric) or 0.0 for p in ok]
            ax.plot(xs, ys, linestyle=style, marker="o", color=COLORS.get(key, OTHER_COLOR),
                    label=_plain(f"{key} {label}"), linewidth=1)
            top = max([top, *xs, *ys])
    ax.plot([0, top], [0, top], color="grey", linestyle="--", linewidth=1, label="offered")
    ax.set_xlabel("offered rate (requests/s)")
    ax.set_ylabel("requests/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return _svg(fig, salt)


def pareto_chart(points: list[dict[str, Any]], front: list[str], best: str | None, budget_bytes: float | None,
                 unit: str, salt: str) -> str:
    """A recipe's configurations: objective against peak memory, the Pareto front joined, the best one ringed,
    those that broke an invariant as red crosses, the budget a dashed line.

    points: {"config", "objective", "peak_bytes", "valid"}; front: the front's configs in memory order."""
    drawn = [p for p in points if _is_number(p.get("objective")) and _is_number(p.get("peak_bytes"))]
    if not drawn:
        return ""
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot()
    mib = 2.0**20
    for p in drawn:
        x, y = p["peak_bytes"] / mib, p["objective"]
        if p["valid"]:
            dot = ax.scatter([x], [y], s=30, color=COLORS["optimized"] if p["config"] in front else OTHER_COLOR,
                             zorder=3)
        else:
            dot = ax.scatter([x], [y], s=40, marker="x", color=FLAG_COLOR, zorder=3)
        dot.set_gid(f"pareto-{'front' if p['config'] in front else 'valid' if p['valid'] else 'invalid'}")
    by_config = {p["config"]: p for p in drawn}
    line = [by_config[c] for c in front if c in by_config]
    if len(line) > 1:
        ax.plot([p["peak_bytes"] / mib for p in line], [p["objective"] for p in line], color=COLORS["optimized"],
                linewidth=1.2, zorder=2)
    for p in line:
        ax.annotate(_plain(_short(p["config"], 40)), (p["peak_bytes"] / mib, p["objective"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    if best in by_config:
        b = by_config[best]
        ax.scatter([b["peak_bytes"] / mib], [b["objective"]], s=140, facecolors="none", edgecolors="#176e1d",
                   linewidths=1.8, zorder=4).set_gid("pareto-best")
    if budget_bytes and _is_number(budget_bytes):
        ax.axvline(budget_bytes / mib, color="#333333", linestyle="--", linewidth=0.9)
        ax.text(budget_bytes / mib, ax.get_ylim()[1], " budget", fontsize=7, va="top")
    ax.set_xlabel("peak memory the configuration added (MiB)", fontsize=8)
    ax.set_ylabel(_plain(unit), fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    return _svg(fig, salt)
