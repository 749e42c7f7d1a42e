"""What the rest of the machine did while a case was timed (rule T12 of docs/measurement.md).

Foreign CPU = CPU time of every process outside the case's own process tree, over wall time x logical cores:
the machine's user + nice + system time (psutil.cpu_times(), Linux /proc/stat) minus the user + system time of
the case's processes (the process the runner started, and its descendants: the worker, or the torchrun agent and
every rank). Steal (time the hypervisor gave another guest) is recorded apart and counts as load too. Also
recorded: the 1-minute load average and, on CUDA, the other processes NVML lists on the device.

A case is "busy" when foreign CPU + steal reaches `busy_threshold` (10% of the machine by default) or another
process computes on its GPU; its comparison then gets no faster/slower verdict. Resolution: the kernel counts CPU
time in ticks of 10 ms, so a pair of blocks of 0.2 s on 2 cores reads foreign load to about +-3%.
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


def case_processes(runner_pid: int | None = None) -> list[psutil.Process]:
    """The case's own processes: the child the runner (`runner_pid`) started, and all its descendants.

    torchrun starts each rank in a session of its own, so the tree is found by parentage, not by session. Without
    a runner (a job started by hand under torchrun) the torchrun agent, this process's parent, is the root."""
    me = psutil.Process()
    root = me
    if runner_pid and runner_pid != me.pid:
        chain = [me] + me.parents()
        root = next((p for p in chain if p.ppid() == runner_pid), me)
    elif not runner_pid and "LOCAL_RANK" in os.environ:
        root = me.parent() or me
    return [root] + root.children(recursive=True)


class LoadMeter:
    """Reads the counters between timed blocks (never inside one); `window(a, b)` gives the foreign load."""

    def __init__(self, runner_pid: int | None = None, cores: int | None = None):
        self.cores = cores or psutil.cpu_count(logical=True) or 1
        self.processes = case_processes(runner_pid)
        self.own_pids = {p.pid for p in self.processes}

    def own_cpu_s(self) -> float:
        total = 0.0
        for proc in self.processes:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def snapshot(self) -> Snapshot:
        busy, steal = _busy_and_steal()
        return Snapshot(time.perf_counter(), busy, steal, self.own_cpu_s())

    def window(self, a: Snapshot, b: Snapshot) -> dict[str, float]:
        """Foreign CPU and steal between two snapshots, as fractions of wall time x cores (0 to 1)."""
        capacity = max(b.t - a.t, 1e-9) * self.cores
        foreign = (b.busy_s - a.busy_s) - (b.own_s - a.own_s)
        return {"foreign_cpu": min(1.0, max(0.0, foreign / capacity)),
                "steal": min(1.0, max(0.0, (b.steal_s - a.steal_s) / capacity))}


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
              gpu_others: int | None, threshold: float = BUSY_THRESHOLD) -> dict[str, Any]:
    """The case's foreign-load record (results.json `measurement.foreign_load`) and, when busy, why.

    per_pair: `LoadMeter.window` of each pair; weights: each pair's wall time (the case-level figure is the
    time-weighted mean)."""
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
    return {"foreign_cpu": foreign, "steal": steal, "per_pair": [p["foreign_cpu"] for p in per_pair],
            "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "gpu_other_processes": gpu_others, "cores": cores, "threshold": threshold,
            "busy": bool(busy_reasons), "reason": "; ".join(busy_reasons) or None, "advice": advice}
