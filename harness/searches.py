"""The searches a case can ask for beyond its paired comparison: capacity (`capacity:`, harness.capacity) and
serving under load (`serving:`, harness.serving). Each probe is one side at one value in a fresh process:
`run(case, probe)` is the runner's `run_case` with the suite's settings bound."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

from harness import capacity, serving
from harness.suite import CaseSpec


def probe_result(record: dict[str, Any]) -> dict[str, Any]:
    """A probe's figures with its status (ok, oom, failed, timeout, crashed) and error, if any."""
    return {"status": record["status"], **(record.get("probe") or {}),
            **({"error": record["error"]} if record.get("error") else {})}


def run_capacity(case: CaseSpec, run: Callable[[CaseSpec, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """The capacity search of a case (`capacity:`), both sides, each probe a fresh process; half the time
    budget per side. Returns the record `harness.capacity.summarize` makes."""
    spec = capacity.CapacitySpec(**case.capacity)
    sides = {}
    for side in ("baseline", "optimized") if not case.alone else ("optimized",):
        def probe(value: int, side=side) -> dict[str, Any]:
            at = dataclasses.replace(case, workload_spec={**case.workload_spec, spec.dim: value})
            return probe_result(run(at, {"side": side, "value": value, "budget_bytes": spec.budget_bytes}))

        sides[side] = capacity.search_side(spec, probe, time.monotonic() + spec.max_time_s / 2)
    return capacity.summarize(spec, sides)


def run_serving(case: CaseSpec, run: Callable[[CaseSpec, dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """The serving block of a case (`serving:`): `repeats` searches per side, baseline and optimized alternating,
    for the highest request rate within the SLO (each probe a fresh process serving the trace at that rate: the
    `serve` workload's `rate`; infinity: every request at t = 0), each search then its offline point; then the
    sweep of `rates`, both sides at each rate (`harness.serving.serve_searches`)."""
    spec = serving.ServingSpec(**case.serving)

    def probe(side: str, rate: float, deadline: float) -> dict[str, Any]:
        # arrivals spanning min_duration_s (offline: as many requests as the start rate's trace)
        trace = {"arrivals": "offline"} if math.isinf(rate) else {"rate": rate}
        if not math.isinf(rate) and case.workload_spec.get("arrivals") == "offline":
            trace["arrivals"] = "poisson"  # a rate probe of a workload whose own paired trace is offline
        requests = max(case.workload_spec.get("requests", 16),  # 16: the serve workload's default
                       math.ceil(spec.min_duration_s * (spec.start_rate if math.isinf(rate) else rate)))
        arrivals_s = 0.0 if math.isinf(rate) else requests / rate
        if time.monotonic() + arrivals_s * (1 + spec.serves) > deadline:
            return {"status": "skipped", "error": f"{requests} requests at {rate:.3g} req/s arrive over "
                                                  f"{arrivals_s:.0f} s per serve, more than the time left"}
        at = dataclasses.replace(case, workload_spec={**case.workload_spec, **trace, "requests": requests})
        return probe_result(run(at, {"kind": "serve", "side": side, "value": f"{rate:.4g}", "serves": spec.serves}))

    return serving.serve_searches(spec, probe)
