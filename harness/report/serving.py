"""Reading a case's `serving:` record (harness.workloads.serve.search writes it): its one-line headline and its
searches, for the terminal, the report and comparisons (no torch)."""

from __future__ import annotations

from typing import Any


def searches_of(side: dict[str, Any]) -> list[dict[str, Any]]:
    """A side's searches (a record written before `repeats` existed is its one search)."""
    return side.get("searches") or [side]


def _with_range(x: float, span: list[float] | None, unit: str = "") -> str:
    if not span or span[0] == span[1]:
        return f"{x:.3g}{unit}"
    return f"{x:.3g}{unit} [{span[0]:.3g}-{span[1]:.3g}]"


def headline(record: dict[str, Any] | None) -> str:
    """'sustainable rate at the SLO: A [lo-hi] -> B [lo-hi] req/s (Rx [lo-hi], 3 repeats); saturated throughput
    Sx [lo-hi]': medians over repeats, the rates and their ratio with the range the searches' brackets allow
    (`side_record`, `rate_ratio`), the throughput ratio with its min-max; '' when none."""
    if not record:
        return ""
    rates = [record["sides"][k] for k in ("baseline", "optimized") if k in record["sides"]]
    text = "sustainable rate at the SLO: " + " → ".join(_side_rate(s) for s in rates) + " req/s"
    if record.get("rate_ratio"):
        repeats = record.get("ratio_repeats") or 1
        text += f" ({_with_range(record['rate_ratio'], record.get('rate_ratio_range'), 'x')}"
        text += f", {repeats} repeats)" if repeats > 1 else ")"
    if record.get("saturation_ratio"):
        saturation = _with_range(record["saturation_ratio"], record.get("saturation_ratio_range"), "x")
        text += f"; saturated throughput {saturation}"
    unsaturated = [k for k, s in record["sides"].items() if not any(x.get("offline") for x in searches_of(s))]
    if unsaturated:
        text += (f"; saturated throughput not measured for {' and '.join(unsaturated)} (no offline point: the "
                 "search ran out of time or a probe failed)")
    busy = sum(s.get("busy_probes") or 0 for s in rates)
    return text + (f"; {busy} probe(s) on a busy machine" if busy else "")


def _side_rate(side: dict[str, Any]) -> str:
    """A side's sustainable rate for the headline: 'not searched' when no probe ran, 'none' when none met the
    SLO, '≥ R' when no search found a failing rate above it."""
    searches = searches_of(side)
    if side.get("rate") is None:
        return "none" if any(s.get("points") or s.get("offline") for s in searches) else \
            "not searched (time budget spent)"
    bracketed = any(s.get("failing") for s in searches)
    return ("" if bracketed else "≥ ") + _with_range(side["rate"], side.get("rate_range"))
