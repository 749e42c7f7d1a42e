"""Synchronized timing: warm-up until stable, paired blocks in random order, sub-resolution batching.

`measure(fn)` is the Python API for timing any callable the way the runner times a case.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pytest_benchmark.timers import compute_timer_precision

from harness.core.device import sync
from harness.core.load import BUSY_THRESHOLD
from harness.core.optimization import ParamError
from harness.core.stats import MIN_EFFECT, MIN_PAIRS

CUDA_EVENT_RESOLUTION_S = 0.5e-6
MIN_PAIRS_PER_PROCESS = 2  # a process's within-process spread needs two pairs
MAX_REPEAT = 1000  # processes per case: each is a fresh process that builds, warms up and times both sides
MAX_MIN_EFFECT = 1.0  # 100 %: a 2x speedup; above it min_effect is surely a percent written as a number


@dataclass
class MeasureSettings:
    """How long to warm up and sample. `None` defaults depend on the device (GPU, CPU).

    Sampling is in pairs of blocks (docs/measurement.md): each pair times a block of the baseline and a block of
    the optimization, in a random order; `block_s` is a block's target duration. Counts and times are per side,
    summed over blocks, and over the case's `repeat` processes: each process gets its share (`per_process`)."""

    repeat: int = 5  # processes a case is measured in, one per round of the suite (harness run --repeat)

    warmup_min_iters: int = 3
    warmup_min_s: float | None = None  # 0.5 s GPU, 0.2 s CPU
    warmup_max_s: float = 10.0
    block_s: float | None = None  # target duration of one block: 0.1 s GPU, 0.2 s CPU
    min_pairs: int = 10  # pairs of blocks before stopping; a verdict needs stats.MIN_PAIRS
    min_samples: int = 10  # per side
    min_time_s: float | None = None  # per side: 2 s GPU, 4 s CPU
    max_time_s: float = 30.0  # per side: the budget, also for until_conclusive
    max_samples: int = 1000  # per side: enough for p99, bounded results files
    until_conclusive: bool = False  # after the minimums, add pairs until the verdict is decided or the budget ends
    busy_threshold: float = BUSY_THRESHOLD  # foreign CPU share of the machine that withholds faster/slower
    timeout_s: float = 900.0  # per case, process start to end
    energy: bool = True  # measure an NVML energy window after timing (GPU only)
    min_effect: float = MIN_EFFECT  # smallest speedup called "faster"/"slower"
    memory_limit_gb: float | None = None  # CPU address-space cap for the case process (RLIMIT_AS)

    def __post_init__(self) -> None:
        for key in ("min_time_s", "max_time_s", "timeout_s", "warmup_min_s", "warmup_max_s", "block_s",
                    "busy_threshold", "min_effect", "memory_limit_gb"):  # nan passes every `<= 0` test
            value = getattr(self, key)
            if isinstance(value, float) and not math.isfinite(value):
                raise ParamError(key, f"must be a finite number (got {value}); leave it out for its default")
        for key in ("warmup_min_iters", "min_pairs", "repeat"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ParamError(key, f"must be at least 1 (got {getattr(self, key)})")
        if self.repeat is not None and self.repeat > MAX_REPEAT:
            raise ParamError("repeat", f"must be at most {MAX_REPEAT:,} processes per case (got {self.repeat:,})")
        for key in ("min_samples", "max_samples"):  # a spread, quartiles and percentiles need two samples per side
            if getattr(self, key) is not None and getattr(self, key) < 2:
                raise ParamError(key, f"must be at least 2 samples per side (got {getattr(self, key)})")
        for key in ("min_time_s", "max_time_s", "timeout_s", "warmup_min_s", "warmup_max_s", "block_s",
                    "memory_limit_gb"):
            if getattr(self, key) is not None and getattr(self, key) <= 0:
                raise ParamError(key, f"must be positive (got {getattr(self, key)})")
        if not 0 < self.busy_threshold <= 1:
            raise ParamError("busy_threshold", f"busy_threshold is a fraction of the machine: 0.1 means 10 %; give "
                                               f"a value in (0, 1] or a percent such as '10%' (got "
                                               f"{self.busy_threshold})")
        if not 0 < self.min_effect <= MAX_MIN_EFFECT:
            raise ParamError("min_effect", f"min_effect is a fraction: 0.05 means 5 % (a case is faster from "
                                           f"1.05x); give a value in (0, {MAX_MIN_EFFECT:g}] or a percent such as "
                                           f"'5%' (got {self.min_effect})")

    def resolved(self, cuda: bool) -> MeasureSettings:
        """A copy with the device-dependent defaults filled in."""
        return MeasureSettings(**{**self.__dict__,
                                  "warmup_min_s": _pick(self.warmup_min_s, 0.5, 0.2, cuda),
                                  "block_s": _pick(self.block_s, 0.1, 0.2, cuda),
                                  "min_time_s": _pick(self.min_time_s, 2.0, 4.0, cuda)})

    def per_process(self, processes: int) -> MeasureSettings:
        """One process's share of a case measured in `processes` processes: the pair, sample and time minimums
        and budgets divided among them (at least MIN_PAIRS_PER_PROCESS pairs and 2 samples a side each); the
        runner adds processes, not pairs, for `until_conclusive`. The same settings for one process."""
        if processes <= 1:
            return self
        share = {key: getattr(self, key) / processes for key in ("min_time_s", "max_time_s")
                 if getattr(self, key) is not None}
        return MeasureSettings(**{**self.__dict__, **share,
                                  "min_pairs": max(MIN_PAIRS_PER_PROCESS, math.ceil(self.min_pairs / processes)),
                                  "min_samples": max(2, math.ceil(self.min_samples / processes)),
                                  "max_samples": max(2, self.max_samples // processes),
                                  "until_conclusive": False})


def _pick(value, gpu, cpu, cuda):
    return value if value is not None else (gpu if cuda else cpu)


class Clock:
    """Times `iterations` calls of a function between synchronizations (T1).

    timer "wall_sync": synchronize + perf_counter around the block (what a user waits for).
    timer "device_events": CUDA events around each call, the L2 flushed before each (which also keeps the GPU
    busy before the start event), as triton's do_bench (T2-T4); only for kernel-level microbenchmarks.
    `reduce` maps a local time to the value all ranks agree on (all_reduce MAX under torchrun, T11).
    """

    def __init__(self, device: Any = "cpu", timer: str = "wall_sync", reduce: Callable[[float], float] | None = None):
        import torch

        self.torch = torch
        self.device = device
        self.cuda = str(device).startswith("cuda")
        if timer == "device_events" and not self.cuda:
            raise ValueError("timer 'device_events' needs a CUDA device; use 'wall_sync'")
        self.timer = timer
        self.reduce = reduce or (lambda t: t)
        self.flush_buffer = None
        if timer == "device_events":
            props = torch.cuda.get_device_properties(torch.device(device))
            size = max(256 * 2**20, 2 * getattr(props, "L2_cache_size", 0))
            self.flush_buffer = torch.empty(size, dtype=torch.int8, device=device)

    @property
    def resolution_s(self) -> float:
        if self.timer == "device_events":
            return CUDA_EVENT_RESOLUTION_S
        return compute_timer_precision(time.perf_counter)

    def sync(self) -> None:
        sync(self.device)

    def time(self, fn: Callable[[], Any], iterations: int = 1) -> float:
        """Seconds per call of `fn`, over a block of `iterations` calls."""
        if self.timer == "device_events":
            return self.reduce(self._time_events(fn, iterations))
        self.sync()
        start = time.perf_counter()
        for _ in range(iterations):
            fn()
        self.sync()
        return self.reduce((time.perf_counter() - start) / iterations)

    def _time_events(self, fn, iterations: int) -> float:
        """Mean of `iterations` calls, each between its own pair of events after its own L2 flush (triton's
        do_bench): every call starts cold, and the flush keeps the GPU busy before start.record() (T3, T4)."""
        cuda = self.torch.cuda
        events = []
        for _ in range(iterations):
            start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
            self.flush_buffer.zero_()
            start.record()
            fn()
            end.record()
            events.append((start, end))
        events[-1][1].synchronize()
        return sum(start.elapsed_time(end) for start, end in events) / 1e3 / iterations


@dataclass
class WarmupResult:
    first_call_s: float  # compile, capture, lazy initialisation: reported as compile_s, never a sample
    samples: list[float]
    seconds: float
    iterations: int  # block size chosen for sampling (T7)
    settled: int = 0  # samples before the stable window began (0 when the cap ended the warm-up)


def warm_up(fn: Callable[[], Any], clock: Clock, settings: MeasureSettings,
            settled: int | None = None) -> WarmupResult:
    """Run `fn` until its time is stable (T5): min iterations and seconds, then last-5 median within 5% of the
    5 before, capped at `warmup_max_s`. Returns the block size that keeps a sample above 100x resolution.

    `settled`: how many samples an earlier process of the same case needed before its times settled
    (`WarmupResult.settled`): then run that many and 3 more (at least the minimum iterations and seconds) instead
    of searching for stability again, which needs 10 samples whatever the step."""
    first = clock.time(fn)
    samples: list[float] = []
    total = 0.0
    while True:
        samples.append(clock.time(fn))
        total += samples[-1]
        enough = len(samples) >= settings.warmup_min_iters and total >= settings.warmup_min_s
        if settled is not None:
            if enough and len(samples) >= settled + 3 or total >= settings.warmup_max_s:
                break
        elif enough and (_stable(samples) or total >= settings.warmup_max_s):
            break
    iterations = 1
    floor = 100 * clock.resolution_s
    while statistics.median(samples[-5:]) * iterations < floor:
        iterations *= 10
    if settled is None:  # a warm-up the cap ended never settled: later processes do the minimum, not the cap again
        settled = len(samples) - 10 if _stable(samples) else 0
    return WarmupResult(first, samples, total, iterations, max(0, settled))


def _stable(samples: list[float]) -> bool:
    if len(samples) < 10:
        return False
    last, before = statistics.median(samples[-5:]), statistics.median(samples[-10:-5])
    return abs(last - before) <= 0.05 * before


def sample(fn: Callable[[], Any], clock: Clock, settings: MeasureSettings, iterations: int = 1) -> list[float]:
    """One series of samples of one callable (`measure`): at least `min_samples` and `min_time_s`, more while
    IQR/median >= 0.1, at most `max_time_s`. Elapsed time is the sum of (reduced) samples, so every rank stops
    together."""
    samples: list[float] = []
    elapsed = 0.0
    while True:
        samples.append(clock.time(fn, iterations))
        elapsed += samples[-1] * iterations
        if elapsed >= settings.max_time_s and len(samples) >= 2:
            return samples
        if len(samples) >= settings.min_samples and elapsed >= settings.min_time_s and _quiet(samples):
            return samples
        if len(samples) >= max(settings.max_samples, settings.min_samples):
            return samples


def _quiet(samples: list[float]) -> bool:
    qs = statistics.quantiles(samples, n=4, method="inclusive")
    median = statistics.median(samples)
    return median > 0 and (qs[2] - qs[0]) / median < 0.1


def block_size(sample_s: float, settings: MeasureSettings) -> int:
    """Samples per block so that a block lasts about `block_s`, for samples of `sample_s` seconds (see
    `warm_sample_s`); at least 1, at most what keeps `min_pairs` pairs within `max_samples`."""
    cap = max(1, settings.max_samples // (2 * settings.min_pairs))
    return max(1, min(cap, round(settings.block_s / max(sample_s, 1e-12))))


def warm_sample_s(warm: WarmupResult) -> float:
    """Seconds one sample (a block of `warm.iterations` calls) takes, from the end of the warm-up."""
    return statistics.median(warm.samples[-5:]) * warm.iterations


@dataclass
class PairedTiming:
    """The blocks of each side, in time order, and which side ran first in each pair."""

    blocks: dict[str, list[list[float]]]
    orders: list[list[str]]
    stopped_by: str


def paired_blocks(run_block: Callable[[str, int], list[float]], block_samples: dict[str, int],
                  iterations: dict[str, int], settings: MeasureSettings, seed: int = 0,
                  on_pair: Callable[[int], None] | None = None,
                  decided: Callable[[dict[str, list[list[float]]]], bool] | None = None,
                  agree: Callable[[bool], bool] = lambda stop: stop) -> PairedTiming:
    """Time pairs of blocks until the stopping rule says enough (docs/measurement.md, "Paired blocks").

    run_block(side, n): time n samples of `side` and return them (seconds per call). In each pair every side
    runs one block, in an order drawn from a seeded generator (the same on every rank). After each pair,
    `on_pair(i)` runs outside any timed block. Stop when the budget is spent (`max_time_s` or `max_samples` on a
    side, never before the 5 pairs a verdict needs), or when `min_pairs`, `min_samples` and `min_time_s` are met
    and, with `until_conclusive`, `decided(blocks)` is true at a check point (pairs = min_pairs x 1.5^k, so the
    interval is not re-tested after every pair). `agree(stop)` makes every rank take rank 0's decision."""
    rng = random.Random(seed)
    names = list(block_samples)
    blocks: dict[str, list[list[float]]] = {name: [] for name in names}
    orders: list[list[str]] = []
    next_check = settings.min_pairs
    while True:
        order = rng.sample(names, len(names))
        for name in order:
            blocks[name].append(run_block(name, block_samples[name]))
        orders.append(order)
        if on_pair:
            on_pair(len(orders) - 1)
        stop = _stop_reason(blocks, iterations, settings, len(orders), next_check, decided)
        if stop == "check":
            next_check = max(next_check + 1, round(next_check * 1.5))
            stop = None
        if agree(stop is not None):
            return PairedTiming(blocks, orders, stop or "rank 0")


def _stop_reason(blocks, iterations, settings: MeasureSettings, pairs: int, next_check: int, decided) -> str | None:
    counts = {n: sum(len(b) for b in bs) for n, bs in blocks.items()}
    times = {n: sum(s for b in bs for s in b) * iterations[n] for n, bs in blocks.items()}
    if not any(counts.values()):  # a rank that times no side: rank 0 decides
        return None
    # the budget never stops a case before it has the pairs a verdict needs (min_pairs when it is smaller)
    if pairs >= min(MIN_PAIRS, settings.min_pairs) and (
            max(times.values()) >= settings.max_time_s
            or max(counts.values()) >= max(settings.max_samples, settings.min_samples)):
        return "budget"
    minimums = (pairs >= settings.min_pairs and min(counts.values()) >= settings.min_samples
                and min(times.values()) >= settings.min_time_s)
    if not minimums:
        return None
    if not settings.until_conclusive or decided is None:
        return "minimums"
    if pairs < next_check:
        return None
    return "conclusive" if decided(blocks) else "check"


def measure(fn: Callable[[], Any], device: Any = "cpu", settings: MeasureSettings | None = None,
            timer: str = "wall_sync") -> dict[str, Any]:
    """Time any callable as the runner times one side: warm-up, then samples until `min_samples` and
    `min_time_s` (at most `max_time_s`). Returns latency statistics (see harness.core.stats.summarize) plus
    `compile_s`, `timer` and `warmup_s`."""
    from harness.core.stats import summarize

    clock = Clock(device, timer)
    settings = (settings or MeasureSettings()).resolved(clock.cuda)
    warm = warm_up(fn, clock, settings)
    samples = sample(fn, clock, settings, warm.iterations)
    out = summarize(samples, warm.iterations)
    out.update(compile_s=warm.first_call_s, timer=timer, warmup_s=warm.seconds)
    return out
