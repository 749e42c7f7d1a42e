"""What the rest of the machine did while a case was timed (rule T12 of docs/measurement.md).

Foreign CPU = CPU time of every process outside the case's own process tree, over wall time x logical cores:
the machine's user + nice + system time (psutil.cpu_times(), Linux /proc/stat) minus the user + system time of
the case's processes (the process the runner started, and its descendants: the worker, or the torchrun agent and
every rank). Steal (time the hypervisor gave another guest) is recorded apart and counts as load too. Also
recorded: the 1-minute load average and, on CUDA, the other processes NVML lists on the device.

A case is "busy" when foreign CPU + steal reaches `busy_threshold` (10% of the machine by default) or another
process computes on its GPU; its comparison then gets no faster/slower verdict. Resolution: the kernel counts CPU
time in ticks of 10 ms, so the load is read over windows of at least 0.2 s (several pairs of short blocks each;
each pair shows its window's figure), which on 2 cores read it to about +-3%; the case's figure is the sum of
the windows' foreign CPU seconds over their capacity, so the ticks' rounding does not add up to a bias.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import psutil

BUSY_THRESHOLD = 0.10  # foreign CPU share of the machine above which no faster/slower verdict is given


@dataclass
class Snapshot:
    """Cumulative counters at one instant (seconds of CPU time)."""

    t: float
    busy_s: float
    steal_s: float
    own_s: float


def _busy_and_steal() -> tuple[float, float]:
    times = psutil.cpu_times()
    busy = sum(getattr(times, k, 0.0) for k in ("user", "nice", "system"))
    return busy, getattr(times, "steal", 0.0)


def case_root(runner_pid: int | None = None) -> psutil.Process:
    """The root of the case's own processes: the child the runner (`runner_pid`) started. torchrun starts each
    rank in a session of its own, so the tree is found by parentage, not by session. Without a runner (a job
    started by hand under torchrun) the torchrun agent, this process's parent, is the root."""
    me = psutil.Process()
    if runner_pid and runner_pid != me.pid:
        return next((p for p in [me] + me.parents() if p.ppid() == runner_pid), me)
    if not runner_pid and "LOCAL_RANK" in os.environ:
        return me.parent() or me
    return me


def case_processes(runner_pid: int | None = None) -> list[psutil.Process]:
    """The case's own processes now: its root (`case_root`) and all its descendants."""
    root = case_root(runner_pid)
    return [root] + root.children(recursive=True)


MIN_WINDOW_S = 0.2  # the counters tick every 10 ms: a shorter window reads 0 or 100 % of a core, not the load


class LoadMeter:
    """Reads the counters between timed blocks (never inside one); `window(a, b)` gives the foreign load.

    The case's own CPU time is read from its process tree as it is at each snapshot, so a process the case
    starts after timing began (a DataLoader worker, a lazily started pool, a helper subprocess) is its own, and
    one that has ended is too, through its parent's children times (the kernel adds a child's CPU time to its
    parent's when the parent reaps it). `pair_done` / `pair_windows` read it over windows of at least
    MIN_WINDOW_S, however short the pairs."""

    def __init__(self, runner_pid: int | None = None, cores: int | None = None,
                 min_window_s: float = MIN_WINDOW_S):
        self.cores = cores or psutil.cpu_count(logical=True) or 1
        self.root = case_root(runner_pid)
        self.known: dict[int, psutil.Process] = {}
        self.own_pids: set[int] = set()
        self.min_window_s = min_window_s
        self.snapshots: list[Snapshot] = []
        self.ends: list[int] = []  # pairs done at each snapshot
        self.pairs = 0

    def own_cpu_s(self) -> float:
        """CPU time of the case's processes now, and of those of them that ended and were reaped."""
        try:
            tree = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            tree = list(self.known.values())
        self.known = {p.pid: self.known.get(p.pid, p) for p in tree}  # one Process per pid: psutil caches it
        self.own_pids = set(self.known)
        total = 0.0
        for proc in self.known.values():
            try:
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                continue
        return total

    def snapshot(self) -> Snapshot:
        busy, steal = _busy_and_steal()
        return Snapshot(time.perf_counter(), busy, steal, self.own_cpu_s())

    def window(self, a: Snapshot, b: Snapshot) -> dict[str, float]:
        """Foreign CPU and steal between two snapshots, as fractions of wall time x cores (0 to 1), and the CPU
        seconds they come from (unclamped: a sum over windows keeps the ticks' rounding unbiased)."""
        capacity = max(b.t - a.t, 1e-9) * self.cores
        foreign = (b.busy_s - a.busy_s) - (b.own_s - a.own_s)
        stolen = b.steal_s - a.steal_s
        return {"foreign_cpu": min(1.0, max(0.0, foreign / capacity)),
                "steal": min(1.0, max(0.0, stolen / capacity)),
                "foreign_s": foreign, "steal_s": stolen, "capacity_s": capacity}

    def start(self) -> None:
        """The first snapshot, before the first pair."""
        self.snapshots, self.ends, self.pairs = [self.snapshot()], [0], 0

    def pair_done(self) -> bool:
        """After each pair: a snapshot when the window since the last is MIN_WINDOW_S long; whether one was
        taken."""
        self.pairs += 1
        if time.perf_counter() - self.snapshots[-1].t < self.min_window_s:
            return False
        self.snapshots.append(self.snapshot())
        self.ends.append(self.pairs)
        return True

    def pair_windows(self) -> tuple[list[dict[str, float]], list[float], list[int]]:
        """The windows (a last one closes the pairs since the last snapshot), their wall times, and how many
        pairs each covers."""
        if self.ends[-1] != self.pairs or len(self.snapshots) == 1:
            self.snapshots.append(self.snapshot())
            self.ends.append(self.pairs)
        pairs = list(zip(self.snapshots, self.snapshots[1:]))
        return ([self.window(a, b) for a, b in pairs], [b.t - a.t for a, b in pairs],
                [e - s for s, e in zip(self.ends, self.ends[1:])])


def gpu_processes(device_index: int, own_pids: set[int]) -> int | None:
    """How many other processes compute on the GPU now (NVML), None without NVML. In a container NVML lists
    host pids, which match none of ours: one of the listed processes is then taken to be this case."""
    from harness.core.energy import nvml_handle

    handle = nvml_handle(device_index)
    if handle is None:
        return None
    import pynvml

    try:
        pids = {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    except Exception:
        return None
    others = pids - own_pids
    return len(others) - (1 if others and others == pids else 0)


def summarize(per_pair: list[dict[str, float]], weights: list[float], cores: int, threads: int,
              gpu_others: int | None, threshold: float = BUSY_THRESHOLD,
              pairs: list[int] | None = None) -> dict[str, Any]:
    """The case's foreign-load record (results.json `measurement.foreign_load`) and, when busy, why.

    per_pair: `LoadMeter.window` of each window; weights: each window's wall time; `pairs`: how many pairs each
    window covers (each pair's figure in `per_pair` is its window's; default one each). The case-level figure is
    the foreign CPU seconds of all windows over their capacity (unclamped sums, where the windows give them),
    else the time-weighted mean."""
    if all("capacity_s" in p for p in per_pair) and per_pair:
        capacity = sum(p["capacity_s"] for p in per_pair) or 1e-9
        foreign = min(1.0, max(0.0, sum(p["foreign_s"] for p in per_pair) / capacity))
        steal = min(1.0, max(0.0, sum(p["steal_s"] for p in per_pair) / capacity))
    else:
        total = sum(weights) or 1.0
        foreign = sum(p["foreign_cpu"] * w for p, w in zip(per_pair, weights)) / total
        steal = sum(p["steal"] * w for p, w in zip(per_pair, weights)) / total
    busy_reasons = []
    if foreign + steal >= threshold:
        steal_text = f" and CPU steal {steal:.0%}" if steal >= 0.01 else ""
        busy_reasons.append(f"machine busy: foreign CPU {foreign:.0%}{steal_text} of {cores} cores")
    if gpu_others:
        busy_reasons.append(f"{gpu_others} other process(es) computing on the GPU")
    advice = None
    free = cores * (1 - foreign - steal)
    if foreign + steal >= threshold and threads > max(1, int(free)):
        advice = (f"the case's {threads} threads shared cores with other work (about {free:.1f} of {cores} "
                  f"cores were free): OpenMP barriers stall when one thread loses its core; measure when the "
                  f"machine is quiet, or set `threads: {max(1, int(free))}` in the suite")
    readings = [p["foreign_cpu"] for p, n in zip(per_pair, pairs or [1] * len(per_pair)) for _ in range(n)]
    return {"foreign_cpu": foreign, "steal": steal, "per_pair": readings, "windows": len(per_pair),
            "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "gpu_other_processes": gpu_others, "cores": cores, "threshold": threshold,
            "busy": bool(busy_reasons), "reason": "; ".join(busy_reasons) or None, "advice": advice}
