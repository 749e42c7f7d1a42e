"""Runs one case in its own process (M1): `python -m harness.core.worker JOB.json RESULT.json`, or under torchrun.

Both sides of the case are built in this process: the baseline first, then the optimization, each measured
for memory while it is the newest thing in the process (in the case's first process; a later one, given
`warmup_settled`, only builds and times: docs/measurement.md §1); then both are warmed up and timed in pairs of short
blocks in a random order (harness.core.timing.paired_blocks), with the load of the rest of the machine read between
pairs (harness.core.load). The result is written atomically by rank 0; an exception becomes a failed/oom/unsupported
result. A crash, an OOM kill or a hang is handled by the parent (`harness.core.runner`).
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time
import traceback
from typing import Any

from harness.core import load, memory, stats
from harness.core.distributed import Distributed
from harness.core.optimization import build_params
from harness.core.plugins import load_registry
from harness.core.results import write_json
from harness.core.sides import Unsupported, build_sides, repeat_noise_pass, run_checks
from harness.core.timing import Clock, MeasureSettings, block_size, paired_blocks, warm_sample_s, warm_up
from harness.core.workload import RunContext


def log(message: str) -> None:
    print(f"[worker] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    job_path, result_path = (argv or sys.argv[1:])[:2]
    with open(job_path) as f:
        job = json.load(f)
    limit_gb = job["measure"].get("memory_limit_gb")
    if limit_gb and not job["env"]["device"].startswith("cuda"):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 2**30), int(limit_gb * 2**30)))
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = run_case(job, started_s(job_path))
    except Unsupported as exc:
        result = {"status": "unsupported", "error": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - every failure must become a recorded result
        traceback.print_exc()
        result = {"status": "oom" if is_oom(exc) else "failed", "error": f"{type(exc).__name__}: {exc}"}
    if rank == 0:
        write_json(result_path, result)
    close_process_groups()  # after the result is safe: a teardown that hangs is the runner's exit watcher's
    return 0 if result["status"] == "ok" else 3


def close_process_groups() -> None:
    """Destroy every process group this process initialized (torchrun's, or the one-rank group a plugin makes
    at world size 1), on success and on failure: torch warns at exit about a live NCCL group and documents
    possible hangs."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_oom(exc: BaseException) -> bool:
    """CUDA OOM, a Python MemoryError, or the CPU allocator's "can't allocate memory"."""
    text = str(exc).lower()
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or "out of memory" in text or "can't allocate memory" in text)


def started_s(job_path: str) -> float | None:
    """Seconds since the runner wrote the job, just before starting this process (interpreter start and imports,
    or a fork): what a case process costs before it does any work."""
    try:
        return max(0.0, time.time() - os.stat(job_path).st_mtime)
    except OSError:
        return None


def run_case(job: dict[str, Any], start_s: float | None = None) -> dict[str, Any]:
    import torch

    phases = {"start": start_s}
    mark = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - mark
        mark = now

    case, env = job["case"], job["env"]
    registry = load_registry(job.get("plugins_dirs", []))
    device_name = env["device"]
    dist = Distributed(device_name)
    if device_name.startswith("cuda"):
        index = int(os.environ.get("LOCAL_RANK", "0")) % max(1, torch.cuda.device_count())
        device_name = f"cuda:{index}" if dist.active else device_name
        torch.cuda.set_device(torch.device(device_name))
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    settings = MeasureSettings(**job["measure"]).resolved(cuda).per_process(job.get("repeat") or 1)
    threads = job["threads"]
    rank_threads = max(1, threads // dist.world_size)
    torch.set_num_threads(rank_threads)

    workload = registry.workloads[case["workload_type"]]()
    spec = build_params(workload.Spec, case["workload_spec"])
    pairs = (("optimized", case["plugins"]),) if case.get("alone") else (("baseline", case["baseline"]),
                                                                        ("optimized", case["plugins"]))
    sides = build_sides(registry, {side: [(u["name"], u["params"]) for u in uses] for side, uses in pairs}, env,
                        type(workload))
    ctx = RunContext(device=device, env=env, seed=job.get("seed", 0), rank=dist.rank,
                     world_size=dist.world_size, threads=rank_threads, case_dir=job.get("case_dir"))

    probe = job.get("probe")
    if probe:  # one side at one value of one of the case's searches (harness.core.searches), in this process
        search = registry.searches[probe["search"]](case["searches"][probe["search"]])
        return search.measure(workload, spec, sides[probe["side"]], ctx, dist, probe, job)

    phase("setup")
    settled = job.get("warmup_settled")  # from the case's first process: this one only times (`timing_only`)
    timing_only = settled is not None
    if not timing_only:
        warm_runtime(workload, spec, sides.get("baseline", []), ctx, dist)
    phase("runtime")
    clock_dist = Clock(device, reduce=dist.max)
    clock_local = Clock(device)
    runs, outputs, first_call, peaks = {}, {}, {}, {}
    for side, opts in sides.items():
        log(f"building {side}")
        before = memory.current_bytes(device) if dist.rank == 0 else None
        run = workload.build(spec, opts, ctx)
        runs[side] = run
        if timing_only or not owns(run, dist):
            dist.barrier()
            continue
        with_threads(run, dist, threads, rank_threads)
        outputs[side] = run.outputs()
        clock = clock_dist if run.distributed else clock_local
        # compile / capture / lazy init happen at the run's first work, in outputs(): never a sample
        first_call[side] = (clock.reduce(run.first_call_s) if run.first_call_s is not None
                            else clock.time(run.timed_step))
        peak = memory.peak_of(run.timed_step, device)
        if before is not None and peak["peak"] is not None:
            peak["side_peak"] = peak["peak"] - before
        peaks[side] = peak
        dist.barrier()
    phase("build")
    if cuda and "baseline" in sides and not timing_only:
        log("repeating the baseline's correctness pass (CUDA kernels are not deterministic)")
        noise = repeat_noise_pass(workload, spec, sides["baseline"], ctx, outputs.get("baseline"),
                                  owned=owns(runs["baseline"], dist))
        dist.barrier()
        if noise is not None and dist.rank == 0:
            outputs["baseline"]["noise"] = noise
    checks = run_checks(sides, outputs) if dist.rank == 0 and not timing_only else []
    if outputs:
        outputs.clear()
        gc.collect()
    phase("checks")

    warm = {}
    for side, run in runs.items():
        if owns(run, dist):
            log(f"warming up {side}")
            with_threads(run, dist, threads, rank_threads)
            warm[side] = warm_up(run.timed_step, clock_dist if run.distributed else clock_local, settings,
                                 (settled or {}).get(side))
        dist.barrier()
    phase("warmup")
    for run in runs.values():
        run.timed = True
    timing, load_record, clocks_log = time_pairs(runs, warm, settings, dist, threads, rank_threads, device, cuda,
                                                 clock_dist, clock_local, job.get("process", 0), job.get("runner_pid"))
    for run in runs.values():
        run.timed = False
    phase("timing")
    blocks = timing.blocks
    extras = {}
    for side, run in runs.items():  # on every rank that runs the side: extra_metrics may use collectives
        if timing_only:  # the case's record keeps its first process's figures beside the timing
            extras[side] = {}
        elif owns(run, dist):
            extras[side] = run.extra_metrics(statistics.median(s for b in blocks[side] for s in b))
        dist.barrier()

    phase("extras")
    result = None
    if dist.rank == 0:
        result = summarize_case(runs, timing, warm, first_call, peaks, extras, checks, settings, clocks_log,
                                load_record, threads, rank_threads, dist.world_size, device, cuda)
        result["measurement"].update(phases_s=phases, timing_only=timing_only)
    dist.barrier()
    dist.close()
    return result if result is not None else {"status": "ok"}


def time_pairs(runs, warm, settings: MeasureSettings, dist: Distributed, threads: int, rank_threads: int, device,
               cuda: bool, clock_dist: Clock, clock_local: Clock, seed: int, runner_pid: int | None):
    """Time the sides in pairs of blocks (harness.core.timing.paired_blocks), reading the foreign load and, on CUDA,
    the clocks between pairs on rank 0. Returns the PairedTiming, the foreign-load record and the GPU states."""
    from harness.core.energy import throttle_record, violation_seconds

    meter = load.LoadMeter(runner_pid) if dist.rank == 0 else None
    snapshots = [meter.snapshot()] if meter else []
    clocks_log = [gpu_state(device, cuda)] if dist.rank == 0 else []
    read_violations = (lambda: violation_seconds(device.index or 0)) if cuda and dist.rank == 0 else None
    violations = [read_violations()] if read_violations else []
    block_samples = {side: block_size(warm_sample_s(warm[side]), settings) if side in warm else 1 for side in runs}
    iterations = {side: warm[side].iterations if side in warm else 1 for side in runs}

    def run_block(side: str, n: int) -> list[float]:
        run, samples = runs[side], []
        if owns(run, dist):
            with_threads(run, dist, threads, rank_threads)
            clock = clock_dist if run.distributed else clock_local
            samples = [clock.time(run.timed_step, iterations[side]) for _ in range(n)]
        dist.barrier()
        return samples

    def on_pair(i: int) -> None:
        if read_violations:
            violations.append(read_violations())
        if meter:
            snapshots.append(meter.snapshot())
            if cuda and (i + 1) % 5 == 0:
                clocks_log.append(gpu_state(device, cuda))

    def decided(blocks) -> bool:
        if "baseline" not in blocks:  # one side alone: its samples are the result, nothing to decide
            return True
        return stats.compare(blocks["baseline"], blocks["optimized"], settings.min_effect)["verdict"] != "inconclusive"

    log(f"timing pairs of blocks ({', '.join(f'{s} {n} samples' for s, n in block_samples.items())})")
    timing = paired_blocks(run_block, block_samples, iterations, settings, seed, on_pair,
                           decided if dist.rank == 0 else None,
                           agree=lambda stop: dist.max(float(stop) if dist.rank == 0 else 0.0) > 0)
    record = None
    if meter:
        clocks_log.append(gpu_state(device, cuda))
        windows = [meter.window(a, b) for a, b in zip(snapshots, snapshots[1:])]
        weights = [b.t - a.t for a, b in zip(snapshots, snapshots[1:])]
        gpu_others = load.gpu_processes(device.index or 0, meter.own_pids) if cuda else None
        record = load.summarize(windows, weights, meter.cores, threads, gpu_others, settings.busy_threshold)
        record["gpu_throttle"] = throttle_record(violations, weights) if read_violations else None
        log(f"{len(timing.orders)} pairs ({timing.stopped_by}); foreign CPU {record['foreign_cpu']:.0%}")
    return timing, record, clocks_log


def warm_runtime(workload, spec, baseline_opts, ctx, dist: Distributed) -> None:
    """Build the baseline once and run one step, then drop it, before anything is measured: one-time runtime
    set-up (thread pools, allocator arenas, kernel libraries, communicator buffers) is then not charged to the
    side built first."""
    run = workload.build(spec, baseline_opts, ctx)
    if owns(run, dist):
        run.timed_step()
    dist.barrier()
    del run
    gc.collect()
    memory.current_bytes(ctx.device)  # trims the heap on CPU


def owns(run, dist: Distributed) -> bool:
    """Whether this rank executes `run`: every rank for a distributed run, rank 0 alone otherwise."""
    return run.distributed or dist.rank == 0


def with_threads(run, dist: Distributed, threads: int, rank_threads: int) -> None:
    """A single-process side under torchrun gets every thread; a distributed side shares them (T8)."""
    import torch

    torch.set_num_threads(rank_threads if run.distributed else threads)


def gpu_state(device, cuda: bool) -> dict[str, Any] | None:
    if not cuda:
        return None
    from harness.core.energy import clock_state

    return clock_state(device.index or 0)


def summarize_case(runs, timing, warm, first_call, peaks, extras, checks, settings, clocks_log, load_record,
                   threads, rank_threads, world_size, device, cuda) -> dict[str, Any]:
    from harness.core.energy import energy_window

    warnings: list[str] = []
    out: dict[str, Any] = {"status": "ok", "checks": checks}
    for side, run in runs.items():
        samples = [s for b in timing.blocks[side] for s in b]
        latency = stats.summarize(samples, warm[side].iterations, [len(b) for b in timing.blocks[side]])
        warnings += stats.warnings_for(side if side == "baseline" else "optimized", samples,
                                       [len(b) for b in timing.blocks[side]])
        median = latency["median"]
        mem = side_memory(run, peaks.get(side) or {"side_peak": None, "source": None})
        energy = None
        if cuda and settings.energy and not (run.distributed and world_size > 1):  # rank 0 alone
            energy = energy_window(run.timed_step, Clock(device).sync, device.index or 0, median)
            if energy and energy.get("warning"):
                warnings.append(f"{side}: energy window {energy['window_s']:.2f} s: {energy['warning']}")
        out[side] = {
            "latency": latency,
            "throughput": {f"{unit}_per_s": count / median for unit, count in run.units.items()},
            "compile_s": first_call.get(side, warm[side].first_call_s),
            "memory": mem,
            "energy": energy,
            "extra": extras[side],
            "info": run.info,
            "threads": threads if not run.distributed else rank_threads,
            "distributed": run.distributed,
        }
    busy = load_record["reason"] if load_record and load_record["busy"] else None
    if "baseline" not in runs:
        comparison = {"speedup": None, "ci95": None, "verdict": "n/a", "reason": "timed alone (baseline: none)",
                      "pairs": 0, "min_effect": settings.min_effect}
    else:
        blocks = timing.blocks
        comparison = stats.compare(blocks["baseline"], blocks["optimized"], settings.min_effect, busy=busy)
        unequal = different_work(runs["baseline"].units, runs["optimized"].units)
        comparison["different_work"] = unequal
        if unequal and comparison["verdict"] != "inconclusive":
            comparison.update(verdict="inconclusive", reason=unequal)
        if unequal:
            warnings.append(unequal)
    base_peak = (out.get("baseline") or {}).get("memory", {}).get("peak_bytes")
    opt_peak = out["optimized"]["memory"].get("peak_bytes")
    comparison["memory_ratio"] = opt_peak / base_peak if base_peak and opt_peak else None
    if not cuda and peaks and max(base_peak or 0, opt_peak or 0) < stats.CPU_MEMORY_RESOLUTION:
        comparison["memory_ratio"] = None
        warnings.append(("memory: both sides' peaks are" if "baseline" in runs else "memory: the peak is")
                        + " under 8 MiB, below what RSS measurement resolves" + ("; no memory ratio"
                                                                                   if "baseline" in runs else ""))
    out["comparison"] = comparison
    throttle = (load_record or {}).get("gpu_throttle")
    capped = [s for s in clocks_log if s and s.get("capped")]
    if throttle and throttle["fraction"] >= 0.01:
        warnings.append(f"GPU clocks were held down by the power or thermal limit for {throttle['fraction']:.0%} "
                        "of the timed pairs (NVML violation counters): timings are throttled")
    elif not throttle and capped:
        warnings.append(f"GPU clocks were capped (power/thermal) at {len(capped)} of {len(clocks_log)} "
                        "pair boundaries: timings may be throttled")
    if busy:
        warnings.append(f"{busy}: no faster/slower verdict" + (f"; {load_record['advice']}"
                                                                if load_record["advice"] else ""))
    failed = [c["name"] for c in checks if not c["passed"]]
    if failed:
        warnings.append(f"invariant failed: {', '.join(failed)}")
    out["warnings"] = warnings
    out["measurement"] = {
        "timer": "wall_sync", "l2_flush": False, "design": "paired blocks, random order",
        "pairs": len(timing.orders), "order": ["".join("B" if s == "baseline" else "O" for s in o)
                                               for o in timing.orders],
        "block_samples": {side: round(statistics.mean(len(b) for b in bs)) for side, bs in timing.blocks.items()},
        "stopped_by": timing.stopped_by, "foreign_load": load_record,
        "num_threads": threads, "processes": world_size,
        "warmup_s": {side: w.seconds for side, w in warm.items()},
        "warmup_settled": {side: w.settled for side, w in warm.items()},
        "settings": {k: v for k, v in settings.__dict__.items()},
        "gpu_state": [s for s in clocks_log if s],
    }
    return out


def different_work(baseline_units: dict[str, float], optimized_units: dict[str, float]) -> str | None:
    """Why a time ratio would compare different work, or None: the two sides' steps must do the same units of
    work (Run.units) for "faster"/"slower" to mean anything; compare throughputs otherwise."""
    if dict(baseline_units) == dict(optimized_units):
        return None
    return (f"the sides do different work per step (baseline {dict(baseline_units)}, optimized "
            f"{dict(optimized_units)}): no faster/slower verdict on time; give the baseline the same workload "
            "changes (e.g. the same plugin with its baseline mode)")


def side_memory(run, peak: dict[str, Any]) -> dict[str, Any]:
    """Measured peak of this side (bytes it added to the process, at its peak step) and the counted parts."""
    breakdown = dict(run.memory())
    mem = {"peak_bytes": peak.get("side_peak"), "source": peak["source"], "breakdown": breakdown}
    for key in ("reserved_peak", "num_alloc_retries", "num_ooms"):
        if key in peak:
            mem[key] = peak[key]
    counted = sum(v for k, v in breakdown.items() if isinstance(v, (int, float)) and not k.startswith("estimate"))
    if mem["peak_bytes"] is not None and "activations" not in breakdown and counted:
        breakdown["activations"] = max(0, mem["peak_bytes"] - counted)
    return mem


if __name__ == "__main__":
    sys.exit(main())
