"""Capacity: the largest value of one workload dimension (a batch, a sequence length) that fits a memory budget.

A case with `capacity: {dim: batch, budget_gb: 8}` asks, for its baseline and its optimized side alike, how far
`dim` can grow. The search doubles the value from `start` until a probe does not fit, then bisects between the
last fit and the first miss (`search`), over multiples of the smallest step both sides accept (a batch that
splits over the ranks and micro-batches: `CapacitySpec.step`, found when the suite is loaded).

Each probe runs in a fresh process (`harness.core.searches.CapacitySearch`), so an out-of-memory error cannot
poison the next one: the side is built at that value, one step runs (compile and lazy init), then its peak is
measured over one more step (`measure_probe`). On CUDA the budget is enforced by the allocator
(`torch.cuda.set_per_process_memory_fraction`): a probe fits when it does not run out of memory and its peak is
within the budget, so "would this fit a 24 GB card?" is answered on an 80 GB one. On the CPU nothing can be
enforced: a probe fits when its measured peak (VmHWM above the process's resident set before the side was
built: weights, gradients, optimizer states, activations, allocator slack) is within the budget.

Step time at the largest fitting value is the median of `PROBE_STEPS` synchronized steps of that probe (the
steps whose peak was measured among them), and throughput is the workload's units over it: an unpaired
measurement beside the case's paired comparison.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.core.optimization import ParamError

PROBE_STEPS = 3  # synchronized steps timed per probe, the peak-measured ones included


@dataclass
class CapacitySpec:
    """A case's `capacity:` block."""

    dim: str = field(metadata={"help": "the workload's integer field to grow: batch, seq_len, prompt_len, ..."})
    budget_gb: float = field(metadata={"help": "memory budget in GiB (2^30 bytes) per process"})
    max_time_s: float = field(default=300.0, metadata={"help": "time for the whole search, both sides; it "
                                                               "stops cleanly and says what it established"})
    start: int | None = field(default=None, metadata={"help": "first value probed (default: one step)"})
    limit: int = field(default=1 << 16, metadata={"help": "largest value probed"})
    step: int = 1  # the smallest multiple both sides accept; set by the suite loader

    def __post_init__(self):
        if not self.budget_gb > 0:
            raise ParamError("budget_gb", f"budget_gb must be > 0 (got {self.budget_gb})")
        if not self.max_time_s > 0:
            raise ParamError("max_time_s", f"max_time_s must be > 0 (got {self.max_time_s})")
        if self.start is not None and self.start < 1:
            raise ParamError("start", f"start must be >= 1 (got {self.start})")
        if self.limit < 1:
            raise ParamError("limit", f"limit must be >= 1 (got {self.limit})")

    @property
    def budget_bytes(self) -> int:
        return int(self.budget_gb * 2**30)


def search(fits: Callable[[int], bool], start: int, step: int, limit: int, deadline: float,
           clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Largest multiple of `step` in [step, limit] for which `fits` is true, assuming fits is monotone
    (true up to a threshold, false above). Doubling from `start` (rounded up to a multiple of `step`) until a
    miss, then bisection between the last fit and the first miss. Stops when `clock()` passes `deadline`.

    Returns largest (None: not even the first value fits, or none was probed), smallest_failing (None: no miss
    seen), complete (the two are one step apart, or the largest is `limit` or the first value fails) and
    stopped ("bracketed", "limit", "first value does not fit" or "time budget spent").
    """
    top = max(step, limit // step * step)
    value = min(max(step, -(-start // step) * step), top)
    largest = smallest_failing = None
    stopped = "time budget spent"
    while clock() < deadline:  # doubling
        if not fits(value):
            smallest_failing, stopped = value, "bracketed"
            break
        largest = value
        if value >= top:
            stopped = "limit"
            break
        value = min(2 * value, top)
    while stopped == "bracketed" and smallest_failing - (largest or 0) > step:  # bisection
        if clock() >= deadline:
            stopped = "time budget spent"
            break
        middle = max((largest or 0) + step, ((largest or 0) + smallest_failing) // 2 // step * step)
        if fits(middle):
            largest = middle
        else:
            smallest_failing = middle
    if largest is None and smallest_failing == step:
        stopped = "first value does not fit"
    complete = stopped in ("limit", "first value does not fit") or (
        stopped == "bracketed" and smallest_failing - (largest or 0) <= step)
    return {"largest": largest, "smallest_failing": smallest_failing, "complete": complete, "stopped": stopped}


def search_side(spec: CapacitySpec, probe: Callable[[int], dict[str, Any]], deadline: float,
                clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """`search` for one side with `probe(value)` (a probe record: status, fits, peak_bytes, step_s, units);
    a probe that fails for another reason than memory ends the search with its error."""
    probes: list[dict[str, Any]] = []
    failure: dict[str, Any] = {}

    def fits(value: int) -> bool:
        if failure:
            return False
        record = {"value": value, **probe(value)}
        probes.append(record)
        if record["status"] not in ("ok", "oom"):
            failure.update(record)
            return False
        return record["status"] == "ok" and bool(record.get("fits"))

    started = clock()
    found = search(fits, spec.start or spec.step, spec.step, spec.limit, deadline, clock)
    if failure:
        found.update(complete=False, stopped=f"probe at {failure['value']} {failure['status']}: "
                                             f"{failure.get('error', '')}"[:300])
    at = next((p for p in probes if p["value"] == found["largest"] and p["status"] == "ok"), None)
    return {**found, "at_largest": at, "probes": sorted(probes, key=lambda p: p["value"]),
            "elapsed_s": clock() - started}


def summarize(spec: CapacitySpec, sides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The case's capacity record: both sides' searches and the optimized / baseline ratios of the largest
    fitting value and of the throughput there (None where a side found nothing)."""
    base, opt = sides.get("baseline", {}), sides.get("optimized", {})
    out: dict[str, Any] = {"dim": spec.dim, "budget_bytes": spec.budget_bytes, "step": spec.step,
                           "max_time_s": spec.max_time_s, "sides": sides, "ratio": None, "throughput_ratio": None,
                           "complete": all(s.get("complete") for s in sides.values())}
    if base.get("largest") and opt.get("largest"):
        # a side whose search ran out of time holds a lower bound: the ratio is then a bound, or unknown when
        # both are bounds
        bound = {(True, True): "", (True, False): "≥", (False, True): "≤"}.get((exact(base), exact(opt)))
        if bound is not None:
            out["ratio"], out["ratio_bound"] = opt["largest"] / base["largest"], bound
        b, o = throughput(base.get("at_largest")), throughput(opt.get("at_largest"))
        if b and o:
            out["throughput_ratio"] = o / b
    return out


def throughput(probe: dict[str, Any] | None) -> float | None:
    """Tokens (else samples, else the first unit) per second of a probe's median step, None if unknown."""
    if not probe or not probe.get("step_s"):
        return None
    units = probe.get("units") or {}
    key = next((k for k in ("tokens", "samples") if k in units), next(iter(units), None))
    return units[key] / probe["step_s"] if key else None


def measure_probe(workload, spec, opts: list, ctx, device, dist, budget_bytes: int) -> dict[str, Any]:
    """Build one side at the probed value in this fresh process and measure it (see the module docstring).

    Returns {"status": "ok", "probe": {fits, peak_bytes, peak_source, step_s, units}}; an out-of-memory error
    propagates (the worker records status "oom", which the search reads as "does not fit")."""
    import torch

    from harness.core import memory
    from harness.core.timing import Clock

    cuda = device.type == "cuda"
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), device)
    before = memory.current_bytes(device)
    run = workload.build(spec, opts, ctx)
    if not run.distributed and dist.rank != 0:
        return {"status": "ok"}  # a one-process side of a multi-rank case: rank 0 measures it
    reduce = dist.max if run.distributed else float  # a distributed side: the largest rank
    clock = Clock(device, reduce=reduce)
    run.timed_step()  # the first step: compile, lazy init and the optimizer states' allocation
    times: list[float] = []
    peak = memory.peak_of(lambda: times.append(clock.time(run.timed_step)), device)
    times += [clock.time(run.timed_step) for _ in range(PROBE_STEPS - len(times))]
    step_s = statistics.median(times)
    side_peak = None
    if peak["peak"] is not None:
        side_peak = reduce(float(peak["peak"] if cuda else peak["peak"] - before))
    return {"status": "ok", "probe": {"fits": side_peak is not None and side_peak <= budget_bytes,
                                      "peak_bytes": side_peak, "peak_source": peak["source"], "step_s": step_s,
                                      "units": run.units}}


def headline(record: dict[str, Any] | None) -> str:
    """'capacity batch ≤ 0.25 GiB: 7 → 8 (1.14x), throughput there 0.83x' for a case's capacity record; '' when
    none. A side that found nothing shows its bound ('< 2', '≥ 8' when the time ran out)."""
    if not record:
        return ""
    sides = record["sides"]
    values = [side_value(sides[k]) for k in ("baseline", "optimized") if k in sides]
    from harness.report.formatting import fmt_ratio  # here: formatting imports this module

    text = f"capacity {record['dim']} ≤ {record['budget_bytes'] / 2**30:.3g} GiB: {' → '.join(values)}"
    if record.get("ratio"):
        text += f" ({record.get('ratio_bound', '')}{fmt_ratio(record['ratio'])}x)"
    elif all(s.get("largest") for s in sides.values()):
        limited = any(s.get("stopped") == "limit" for s in sides.values())
        text += (" (ratio unknown: both are lower bounds; raise the search's " + ("limit" if limited else "max_time_s")
                 + ")")
    if record.get("throughput_ratio"):
        text += f", throughput there {fmt_ratio(record['throughput_ratio'])}x"
    return text


def exact(side: dict[str, Any]) -> bool:
    """Whether a side's largest fitting value is its capacity, not a lower bound: the search bracketed it (one
    step from a failing value), not stopped by time or by the search's `limit` (that fits: the capacity is at
    least the limit)."""
    return bool(side.get("complete")) and side.get("stopped") != "limit"


def side_value(side: dict[str, Any]) -> str:
    """The largest fitting value, marked '≥' when it is a lower bound (the search ran out of time, or reached its
    limit, which fits)."""
    if side.get("largest") is None:
        failing = side.get("smallest_failing")
        return f"< {failing}" if failing else "none probed"
    if side.get("stopped") == "limit":
        return f"≥ {side['largest']} (the search's limit)"
    return str(side["largest"]) if side.get("complete") else f"≥ {side['largest']}"


def resolve_step(accepts: Callable[[int], bool], limit: int) -> tuple[int, int] | None:
    """The step (the smallest value whose first three multiples `accepts`) and the largest accepted multiple of
    it up to `limit` (by bisection); None when no step in 1..64 works."""
    step = next((s for s in range(1, 65) if all(accepts(k * s) for k in (1, 2, 3))), None)
    if step is None:
        return None
    low, high = 1, limit // step
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if accepts(middle * step) else (low, middle - 1)
    return step, low * step
