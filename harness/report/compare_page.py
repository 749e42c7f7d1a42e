"""The comparison of runs as text (`format_table`, printed by `harness compare`) and as one HTML page
(`render_compare`): the data comes from `harness.report.compare.compare`."""

from __future__ import annotations

from typing import Any

from harness.core import stats
from harness.report import charts
from harness.report.formatting import fmt_interval, fmt_ratio, fmt_time, is_number, unit_label
from harness.report.page import environment


def verdict_word(v: dict[str, Any] | None) -> str:
    if v is None:
        return "—"
    if v["verdict"] in ("faster", "slower") and is_number(v["speedup"]) and v["speedup"] > 0:
        x = v["speedup"] if v["verdict"] == "faster" else 1 / v["speedup"]
        return f"{fmt_ratio(x)}× {v['verdict']}"
    if v["verdict"] == "inconclusive" and v.get("busy"):
        return "inconclusive (busy)"
    return "no sig. diff." if v["verdict"] == "no significant difference" else v["verdict"]


def format_headline(result: dict[str, Any]) -> list[str]:
    """What differs between the machines, then per later run its geometric-mean speedup and the cases that moved
    most, then each optimization's speedup per run and whether that differs: the terminal's first lines."""
    out = [f"#{i}: {r['path']} ({r['device']}, run {r['run_id']})" for i, r in enumerate(result["runs"])]
    for row in result["headline_env"]:
        out.append(f"  {row['label']}: " + " | ".join(f"#{i} {v}" for i, v in enumerate(row["values"])))
    for s in result["summaries"]:
        g = s["geomean"]
        out.append(f"#{s['run']} vs #0: geometric-mean speedup {fmt_interval(g['speedup'], g['ci95'])} over "
                   f"{g['cases']} case sides (> 1: #{s['run']} faster)")
        if s.get("not_comparable"):
            out.append(f"  not comparable (left out): {'; '.join(s['not_comparable'])}")
        for word, moved in (("faster", s["faster"]), ("slower", s["slower"])):
            if moved:
                out.append(f"  most {word}: " + "; ".join(
                    f"{m['case']} [{m['side'] or '-'}] {fmt_ratio(m['speedup'])}x ({verdict_word(m)})" for m in moved))
    effects = result.get("effects") or []
    if effects:
        n = len(result["runs"])
        lines = [["optimization effect", *[f"speedup #{i}" for i in range(n)],
                  *[f"#{i}/#0 effect" for i in range(1, n)]]]
        for row in effects:
            cells = [row["case"]] + [fmt_interval(r["speedup"], r["ci95"]) + (" busy" if r["busy"] else "")
                                     if r else "n/a" for r in row["runs"]]
            cells += [(f"{fmt_ratio(v['ratio'])}x {v['verdict']}" if v and v["ratio"]
                       else (v or {}).get("verdict", "n/a")) + note_mark(v) for v in row["versus"][1:]]
            lines.append(cells)
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
        out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    for row in result.get("searches") or []:
        out.append(f"{row['case']} {row['kind']}:")
        out += [f"  #{i} {text or 'n/a'}" for i, text in enumerate(row["headlines"])]
    return out


def format_table(result: dict[str, Any]) -> str:
    """The headline (`format_headline`), then a plain-text table: median per run, then each later run's time
    ratio and verdict against the first."""
    n = len(result["runs"])
    head = ["case", "side"] + [f"median #{i}" for i in range(n)]
    head += [h for i in range(1, n) for h in (f"#{i}/#0 time", f"#{i} vs #0")]
    lines = [head]
    health_by_case = {h["case"]: h["runs"] for h in result["health"]}
    for row in result["rows"]:
        cells = [row["case"], row["side"] or "-"]
        health = health_by_case[row["case"]]
        cells += [(fmt_time(e["median"]) + (" checks FAILED" if h["failed_checks"] else "")) if e["status"] == "ok"
                  else e["status"] for e, h in zip(row["entries"], health)]
        for v in row["versus"][1:]:
            cells += [fmt_ratio(v["time_ratio"], 3) if v and v["time_ratio"] else "—", verdict_word(v) + note_mark(v)]
        lines.append(cells)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = format_headline(result) + [""]
    for j, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    if result["partial"]:
        out.append("not in every run: " + ", ".join(result["partial"]))
    out.append("time ratio = later median / first median (< 1 = later faster); verdict: 95% bootstrap interval.")
    out += [f"{NOTE_MARK} {n}" for n in notes(result)]
    return "\n".join(out) + "\n"


NOTE_MARK = "*"


def note_mark(v: dict[str, Any] | None) -> str:
    """' *' after a verdict that carries a note (compared with the one-process margins), else ''."""
    return f" {NOTE_MARK}" if v and v.get("note") else ""


def notes(result: dict[str, Any]) -> list[str]:
    """The distinct notes of the comparisons (cases and optimization effects), in order of appearance."""
    found = [v["note"] for row in result["rows"] for v in row["versus"][1:] if v and v.get("note")]
    found += [v["note"] for row in result.get("effects") or [] for v in row["versus"][1:] if v and v.get("note")]
    return list(dict.fromkeys(found))


def forests(result: dict[str, Any]) -> list[str]:
    """One forest plot per later run (small multiples): every case side's speedup against run #0 with its
    interval, coloured by verdict, busy comparisons hollow."""
    out = []
    for i in range(1, len(result["runs"])):
        rows = []
        for row in result["rows"]:
            v = row["versus"][i]
            if not v or not v.get("speedup"):
                continue
            rows.append({"label": f"{row['case']} [{row['side'] or '-'}]", "speedup": v["speedup"],
                         "ci": v["ci95"], "verdict": v["verdict"], "busy": v["busy"],
                         "text": fmt_interval(v["speedup"], v["ci95"], "×")})
        out.append(charts.forest_plot(rows, stats.equivalence_band(stats.MIN_EFFECT), f"cmp{i}",
                                      xlabel=f"speedup of run #{i} over run #0 = #0 time ÷ #{i} time "
                                             f"(log scale; right of 1 = #{i} faster)"))
    return out


def effect_forests(result: dict[str, Any]) -> list[str]:
    """Per later run: each optimization's speedup there divided by its speedup in run #0, with the interval
    of `harness.core.stats.compare_effects` (right of 1: it buys more on run #i)."""
    out = []
    for i in range(1, len(result["runs"])):
        rows = [{"label": row["case"], "speedup": v["ratio"], "ci": v["ci95"], "verdict": v["verdict"],
                 "busy": v["busy"],
                 "text": f"{fmt_ratio(v['ratio'])}× ({v['verdict']})"}
                for row in result["effects"] if (v := row["versus"][i]) and v.get("ratio")]
        out.append(charts.forest_plot(rows, stats.equivalence_band(stats.MIN_EFFECT), f"eff{i}",
                                      xlabel=f"optimization speedup on run #{i} ÷ on run #0 "
                                             "(log scale; right of 1 = it buys more there)"))
    return out


def render_compare(result: dict[str, Any]) -> str:
    """The comparison as one self-contained HTML page (same template base and escaping as the report)."""
    env = environment()
    env.filters.update(ratio=lambda x: "—" if x is None else fmt_ratio(x, 3), vword=verdict_word, unit=unit_label,
                       interval=lambda v: fmt_interval(v.get("speedup"), v.get("ci95"), "×"))
    return env.get_template("compare.html").render(c=result, forests=forests(result), notes=notes(result),
                                                   effect_forests=effect_forests(result),
                                                   searches=search_charts(result))


def search_charts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each case's capacity or serving search with one chart per run (`harness.report.charts.capacity_chart`: peak
    against the value; `serving_chart`: latency against requests/s served), drawn side by side."""
    out = []
    for i, row in enumerate(result.get("searches") or []):
        draw = charts.capacity_chart if row["kind"] == "capacity" else charts.serving_chart
        out.append({**row, "svgs": [draw(r, f"s{i}r{j}") if r else "" for j, r in enumerate(row["records"])]})
    return out


