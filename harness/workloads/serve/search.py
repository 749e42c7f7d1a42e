"""Serving under load: the highest request rate that meets a latency SLO, and sweeps of offered rates. The
traces served come from harness.workloads.serve.trace (Poisson / gamma / offline arrivals, lengths files); the
server is the `serve` workload (harness/workloads/serve/). `ServingSearch` is the case's `serving:` block.

A percentile over too few requests means little: the q-th percentile of n samples has fewer than one sample above
it when n < 1 / (1 - q) (p99 needs 100 requests, p90 10). `too_few_for` flags such a point; MLPerf's Server
scenario asks for far more (a minimum query count and run time), which a CPU run cannot afford, so the flag is
shown beside the figure rather than hiding it.

`sustainable_rate` finds the highest rate at which a server meets its SLO, assuming the SLO holds below some rate
and fails above it: from a starting rate it doubles (or halves) until the answer is bracketed, then bisects on a
log scale until the bracket's ratio is within `rel_tol` (MLPerf LoadGen's peak-performance search does the same
kind of bracketing on the target QPS). `serve_searches` repeats it per side, the two sides alternating, and gives
medians with the range the brackets allow; a sweep then serves both sides at a list of offered rates (vLLM's
`--request-rate` sweep), for goodput against offered rate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.core.optimization import ParamError
from harness.core.searches import Probe, Search, probe_result
from harness.report.serving import headline, searches_of


def too_few_for(n: int, q: float) -> bool:
    """True when n samples cannot support the q-th percentile: fewer than one sample would lie above it."""
    return n < math.ceil(1 / (1 - q) - 1e-9)


def sustainable_rate(meets: Callable[[float], bool], start: float, rel_tol: float = 0.1,
                     limits: tuple[float, float] = (1e-3, 1e6), deadline: float = math.inf,
                     clock: Callable[[], float] = time.monotonic, step: float = 2.0) -> dict[str, Any]:
    """The highest rate in `limits` at which `meets(rate)` holds, assuming it holds below a threshold and fails
    above. Multiplying (or dividing) by `step` from `start` brackets it, then geometric bisection narrows the
    bracket until failing / meeting <= 1 + rel_tol; stops when `clock()` passes `deadline`.

    Returns rate (the highest rate seen to meet the SLO; None: none did), failing (the lowest that failed; None:
    none did), complete (bracketed within rel_tol, or a limit reached) and stopped ("bracketed", "upper limit",
    "lower limit", "time budget spent")."""
    low, high = limits
    best = worst = None
    rate, stopped = min(max(start, low), high), "time budget spent"
    while clock() < deadline:  # bracket
        if meets(rate):
            best = rate
            if worst is not None:
                stopped = "bracketed"
                break
            if rate >= high:
                stopped = "upper limit"
                break
            rate = min(rate * step, high)
        else:
            worst = rate
            if best is not None:
                stopped = "bracketed"
                break
            if rate <= low:
                stopped = "lower limit"
                break
            rate = max(rate / step, low)
    while stopped == "bracketed" and worst / best > 1 + rel_tol:
        if clock() >= deadline:
            stopped = "time budget spent"
            break
        middle = math.sqrt(best * worst)
        if meets(middle):
            best = middle
        else:
            worst = middle
    complete = stopped in ("upper limit", "lower limit") or (stopped == "bracketed" and worst / best <= 1 + rel_tol)
    return {"rate": best, "failing": worst, "complete": complete, "stopped": stopped}


# rates searched, as factors of start_rate: below 1/16 an unloaded server's SLO miss is not a rate question, and a
# probe's trace (its requests / rate) would take minutes
RATE_RANGE = (1 / 16, 4096)
WARMUP_REQUESTS = 8  # served once before a probe's timed serves: first-call costs stay out of the percentiles
SLO_METRICS = tuple(f"{m}_{q}_s" for m in ("ttft", "tpot", "e2e") for q in ("p50", "p90", "p99", "mean"))
# `rates: auto`: offered rates as fractions of the faster side's saturated request rate, light load to overload
AUTO_FRACTIONS = (0.25, 0.5, 0.75, 1.0, 1.5)
SEARCH_SHARE = 0.7  # of max_time_s for the searches when a sweep follows them


@dataclass
class ServingSpec:
    """A case's `serving:` block: the highest request rate each side sustains within an SLO, searched `repeats`
    times per side, and optionally a sweep of offered rates."""

    slo: dict[str, float] = field(metadata={"help": f"bounds in seconds on any of {', '.join(SLO_METRICS)}"})
    start_rate: float = field(default=4.0, metadata={"help": "first rate probed, requests per second"})
    rel_tol: float = field(default=0.15, metadata={"help": "stop when failing / meeting rate <= 1 + rel_tol"})
    repeats: int = field(default=3, metadata={
        "help": "searches per side, baseline and optimized alternating; a later one starts near that side's last "
                "answer on a grid moved by k / repeats of a rel_tol step; ranges are what the searches' brackets "
                "allow"})
    rates: Any = field(default=None, metadata={
        "help": "a sweep after the searches: offered rates (req/s) both sides serve, or 'auto': "
                f"{', '.join(f'{f:g}' for f in AUTO_FRACTIONS)} x the faster side's saturated request rate"})
    serves: int = field(default=1, metadata={"help": "timed serves of the trace per probe (after a short warm-up)"})
    min_duration_s: float = field(default=10.0, metadata={
        "help": "each probe's arrivals span at least this long: requests = max(the trace's, rate x this); a short "
                "trace drains its queue before an overload shows in the latencies"})
    max_time_s: float = field(default=300.0, metadata={
        "help": f"time for the whole block, both sides (the searches get {SEARCH_SHARE:g} of it when a sweep follows)"})

    def __post_init__(self):
        unknown = [k for k in self.slo if k not in SLO_METRICS]
        if not self.slo or unknown:
            raise ParamError("slo", f"give bounds on {', '.join(SLO_METRICS)} (got {sorted(self.slo) or 'none'})")
        if any(not (isinstance(v, (int, float)) and v > 0) for v in self.slo.values()):
            raise ParamError("slo", f"every bound must be a positive number of seconds (got {self.slo})")
        for name in ("start_rate", "rel_tol", "max_time_s", "min_duration_s"):
            if not getattr(self, name) > 0:
                raise ParamError(name, f"must be > 0 (got {getattr(self, name)})")
        for name in ("serves", "repeats"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1 (got {getattr(self, name)})")
        ok_list = isinstance(self.rates, list) and self.rates and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and 0 < r < math.inf for r in self.rates)
        if self.rates not in (None, "auto") and not ok_list:
            raise ParamError("rates", f"give 'auto' or a list of positive request rates (got {self.rates!r})")


def meets_slo(metrics: dict[str, Any], slo: dict[str, float]) -> bool:
    """Every bounded metric measured and within its bound (a metric with no sample does not meet it)."""
    return all(metrics.get(k) is not None and metrics[k] <= bound for k, bound in slo.items())


def point_record(rate: float, probe: dict[str, Any], slo: dict[str, float]) -> dict[str, Any]:
    """One probed rate: status, the serve metrics, whether the SLO held and which of its bounded percentiles had
    too few requests to mean much (the workload's `too_few_requests`, from `too_few_for`)."""
    metrics = probe.get("metrics") or {}
    flagged = [k for k in slo if k in (metrics.get("too_few_requests") or [])]
    return {"rate": rate, "status": probe["status"], "error": probe.get("error"), "metrics": metrics,
            "meets_slo": probe["status"] == "ok" and meets_slo(metrics, slo), "too_few_requests": flagged}


def search_side(spec: ServingSpec, probe: Callable[[float], dict[str, Any]], deadline: float,
                start: float | None = None, step: float = 2.0,
                clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """`sustainable_rate` for one side from `start` (default: the spec's start_rate) in steps of `step`
    (`probe(rate)` serves the trace at that rate in a fresh process), then the offline point (every request at
    t = 0: the saturated throughput) if time is left."""
    points: list[dict[str, Any]] = []
    failure: dict[str, Any] = {}

    def meets(rate: float) -> bool:
        if failure:  # a probe that failed or could not run ends the search (its rate is not a miss)
            return False
        points.append(point_record(rate, probe(rate), spec.slo))
        if points[-1]["status"] != "ok":
            failure.update(points[-1])
        return points[-1]["meets_slo"]

    started = clock()
    limits = (spec.start_rate * RATE_RANGE[0], spec.start_rate * RATE_RANGE[1])
    found = sustainable_rate(meets, start or spec.start_rate, spec.rel_tol, limits, deadline, clock, step)
    if failure:
        found.update(complete=False, stopped=f"probe at {failure['rate']:.3g} req/s {failure['status']}: "
                                             f"{failure.get('error') or ''}"[:300])
    offline = None  # rate None in the record: every request at t = 0 (JSON has no infinity)
    if clock() < deadline and not failure:
        offline = {**point_record(math.inf, probe(math.inf), spec.slo), "rate": None}
    return {**found, "points": sorted(points, key=lambda p: p["rate"]), "offline": offline,
            "elapsed_s": clock() - started}


def saturated(search: dict[str, Any], key: str = "tokens_per_s_total") -> float | None:
    """A search's offline throughput (`key` of its offline point's metrics), None without one."""
    return ((search.get("offline") or {}).get("metrics") or {}).get(key)


def _spread(values: list[float]) -> dict[str, Any]:
    values = [v for v in values if v is not None]
    return {"median": statistics.median(values) if values else None,
            "range": [min(values), max(values)] if values else None, "n": len(values)}


def side_record(searches: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's repeated searches: the median sustainable rate with `rate_range` [the lowest rate any search
    saw meet the SLO, the highest it saw fail] (where the threshold lay in every search: resolution and repeat
    noise together), the median saturated throughput (tokens/s with its min-max, requests/s), the searches that
    found a rate, and the probes run on a busy machine (foreign CPU above harness.core.load.BUSY_THRESHOLD)."""
    from harness.core.load import BUSY_THRESHOLD

    rate = _spread([s.get("rate") for s in searches])
    tokens = _spread([saturated(s) for s in searches])
    bounds = [s.get("failing") or s.get("rate") for s in searches if s.get("rate")]
    points = [p for s in searches for p in s.get("points", []) + [s.get("offline")] if p]
    busy = sum(((p.get("metrics") or {}).get("foreign_cpu") or 0) > BUSY_THRESHOLD for p in points)
    return {"rate": rate["median"], "rate_range": [rate["range"][0], max(bounds)] if bounds else None,
            "found": rate["n"], "repeats": len(searches), "busy_probes": busy,
            "saturated_tokens_per_s": tokens["median"], "saturated_range": tokens["range"],
            "saturated_requests_per_s": _spread([saturated(s, "requests_per_s") for s in searches])["median"],
            "searches": searches}


def paired_ratio(base: list[float | None], opt: list[float | None]) -> dict[str, Any]:
    """optimized / baseline per repeat (repeat i of both sides ran one after the other): median and min-max."""
    ratios = _spread([o / b if b and o else None for b, o in zip(base, opt)])
    return {"ratio": ratios["median"], "range": ratios["range"], "repeats": ratios["n"]}


def rate_ratio(base: list[dict[str, Any]], opt: list[dict[str, Any]]) -> dict[str, Any]:
    """The sustainable-rate ratio per repeat (optimized / baseline search i): its median, and the range its
    brackets allow, [min of opt rate / base failing, max of opt failing / base rate] over the repeats."""
    pairs = [(b, o) for b, o in zip(base, opt) if b.get("rate") and o.get("rate")]
    if not pairs:
        return {"ratio": None, "range": None, "repeats": 0}
    low = min(o["rate"] / (b.get("failing") or b["rate"]) for b, o in pairs)
    high = max((o.get("failing") or o["rate"]) / b["rate"] for b, o in pairs)
    return {"ratio": statistics.median(o["rate"] / b["rate"] for b, o in pairs), "range": [low, high],
            "repeats": len(pairs)}


def sweep_rates(spec: ServingSpec, sides: dict[str, dict[str, Any]]) -> list[float]:
    """The sweep's offered rates: the spec's list, or for 'auto' `AUTO_FRACTIONS` of the faster side's saturated
    request rate (empty when no side measured one)."""
    if spec.rates != "auto":
        return list(spec.rates or [])
    top = max([s.get("saturated_requests_per_s") or 0 for s in sides.values()], default=0)
    return [f * top for f in AUTO_FRACTIONS] if top else []


def summarize(spec: ServingSpec, sides: dict[str, dict[str, Any]],
              sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """The case's serving record: each side's searches (`side_record`), the optimized / baseline ratios of
    sustainable rate and saturated token throughput per repeat (median, range), and the sweep if any."""
    base, opt = sides.get("baseline", {}), sides.get("optimized", {})
    out: dict[str, Any] = {"slo": spec.slo, "rel_tol": spec.rel_tol, "sides": sides, "sweep": sweep,
                           "rate_ratio": None, "rate_ratio_range": None, "saturation_ratio": None,
                           "saturation_ratio_range": None}
    if base and opt:
        rates = rate_ratio(searches_of(base), searches_of(opt))
        tput = paired_ratio([saturated(s) for s in searches_of(base)], [saturated(s) for s in searches_of(opt)])
        out.update(rate_ratio=rates["ratio"], rate_ratio_range=rates["range"], ratio_repeats=rates["repeats"],
                   saturation_ratio=tput["ratio"], saturation_ratio_range=tput["range"])
    return out


def serve_searches(spec: ServingSpec, probe: Callable[[str, float, float], dict[str, Any]],
                   clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """The whole `serving:` block: `spec.repeats` searches per side, baseline and optimized alternating (each
    with an equal share of the time left for the searches; a later one starts near that side's last answer on a
    moved grid and brackets in steps of 1 + 2 rel_tol), then the sweep, both sides at each rate.
    `probe(side, rate, deadline)` serves the trace at `rate` (infinity: offline) in a fresh process. Returns
    `summarize`'s record."""
    end = clock() + spec.max_time_s
    searches_end = clock() + spec.max_time_s * (SEARCH_SHARE if spec.rates else 1)
    order = [side for _ in range(spec.repeats) for side in ("baseline", "optimized")]
    searches: dict[str, list[dict[str, Any]]] = {"baseline": [], "optimized": []}
    for i, side in enumerate(order):
        deadline = clock() + (searches_end - clock()) / (len(order) - i)
        last = (searches[side] or [{}])[-1].get("rate")
        # a later search starts near the last answer, its grid moved by a fraction of rel_tol (k / repeats), so
        # the repeats probe other rates than the first and their brackets narrow where the threshold lies
        start = last * (1 + spec.rel_tol) ** (len(searches[side]) / spec.repeats) if last else None
        side_probe = functools.partial(probe, side, deadline=deadline)
        searches[side].append(search_side(spec, side_probe, deadline, start=start,
                                          step=1 + 2 * spec.rel_tol if last else 2.0, clock=clock))
    sides = {side: side_record(found) for side, found in searches.items()}
    sweep = None
    if spec.rates:
        rates = sweep_rates(spec, sides)
        sweep = {"rates": rates, "points": {side: [] for side in sides}}
        for rate in rates:
            for side in sides:
                sweep["points"][side].append(point_record(rate, probe(side, rate, deadline=end), spec.slo))
    return summarize(spec, sides, sweep)


class ServingSearch(Search):
    """`serving:`: `repeats` searches per side, baseline and optimized alternating, for the highest request rate
    within the SLO (each probe a fresh process serving the trace at that rate: the serve workload's `rate`;
    infinity: every request at t = 0), each search then its offline point; then the sweep of `rates`, both sides
    at each rate (`serve_searches`)."""

    key = "serving"
    Spec = ServingSpec

    def announce(self) -> str:
        slo = ", ".join(f"{k} <= {v:g} s" for k, v in self.block["slo"].items())
        return f"serving: the highest rate within the SLO ({slo}), each side"

    def run(self, case: Any, probe: Probe) -> dict[str, Any]:
        spec = ServingSpec(**self.block)

        def probe_at(side: str, rate: float, deadline: float) -> dict[str, Any]:
            # arrivals spanning min_duration_s (offline: as many requests as the start rate's trace)
            trace = {"arrivals": "offline"} if math.isinf(rate) else {"rate": rate}
            if not math.isinf(rate) and case.workload_spec.get("arrivals") == "offline":
                trace["arrivals"] = "poisson"  # a rate probe of a workload whose own paired trace is offline
            requests = max(case.workload_spec["requests"],
                           math.ceil(spec.min_duration_s * (spec.start_rate if math.isinf(rate) else rate)))
            arrivals_s = 0.0 if math.isinf(rate) else requests / rate
            if time.monotonic() + arrivals_s * (1 + spec.serves) > deadline:
                return {"status": "skipped", "error": f"{requests} requests at {rate:.3g} req/s arrive over "
                                                      f"{arrivals_s:.0f} s per serve, more than the time left"}
            at = dataclasses.replace(case, workload_spec={**case.workload_spec, **trace, "requests": requests})
            return probe_result(probe(at, {"search": self.key, "side": side, "value": f"{rate:.4g}"}))

        return serve_searches(spec, probe_at)

    def measure(self, workload: Any, spec: Any, opts: list, ctx: Any, dist: Any, probe: dict[str, Any],
                job: dict[str, Any]) -> dict[str, Any]:
        return {"status": "ok", "probe": measure_serve_probe(workload, spec, opts, ctx, self.block["serves"],
                                                              job.get("runner_pid"))}

    headline = staticmethod(headline)


def measure_serve_probe(workload, spec, opts: list, ctx, serves: int, runner_pid: int | None = None) -> dict[str, Any]:
    """Build one side of a `serve` workload with its trace at the probed rate (already in `spec`) in this fresh
    process, warm it up by serving the trace's first `WARMUP_REQUESTS` requests, then serve the whole trace
    `serves` times timed; returns the run's metrics over the timed serves (ServeRun.extra_metrics, with the
    requests they hold) and the foreign CPU share of the machine meanwhile (harness.core.load.LoadMeter: other
    processes than this one and the runner)."""
    from harness.core.load import LoadMeter

    run = workload.build(spec, opts, ctx)
    if not hasattr(run, "warm_up"):
        raise ValueError(f"a serving search needs a workload that serves a request trace (type: serve), not "
                         f"'{workload.name}'")
    run.warm_up(WARMUP_REQUESTS)
    run.timed = True
    meter, times = LoadMeter(runner_pid), []
    before = meter.snapshot()
    for _ in range(serves):
        _, seconds = run.synced(run.step)
        times.append(seconds)
    load = meter.window(before, meter.snapshot())
    run.timed = False
    metrics = run.extra_metrics(statistics.median(times))
    metrics.update(foreign_cpu=load["foreign_cpu"])
    return {"status": "ok", "metrics": metrics}
