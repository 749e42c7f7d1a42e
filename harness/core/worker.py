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
import signal
import socket
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from harness.core import load, memory, stats
from harness.core.distributed import Distributed
from harness.core.errors import OutputError
from harness.core.optimization import build_params
from harness.core.plugins import load_registry
from harness.core.results import write_json
from harness.core.sides import Isolation, Unsupported, build_sides, repeat_noise_pass, run_checks
from harness.core.timing import Clock, MeasureSettings, block_size, paired_blocks, warm_sample_s, warm_up
from harness.core.workload import RunContext


def log(message: str) -> None:
    print(f"[worker] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """The case process: `run_job`, watched by its runner, under the case's memory limit, and ending what the
    case started (`end_leftovers`). Only for a process of its own: in another process (the runner's, with
    --inline; a test's) call `run_job`, which neither kills nor limits what is not the case's."""
    job_path, result_path = (argv or sys.argv[1:])[:2]
    with open(job_path) as f:
        job = json.load(f)
    watch_runner(job)
    limit_gb = job["measure"].get("memory_limit_gb")
    if limit_gb and not job["env"]["device"].startswith("cuda"):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 2**30), int(limit_gb * 2**30)))
    code = run_job(job_path, result_path)
    end_leftovers()
    return code


def run_job(job_path: str, result_path: str) -> int:
    """Run the job file's case and write its result (rank 0): 0 when it passed, 3 when it did not, 4 when the
    result could not be written. An exception becomes a recorded failed/oom/unsupported result."""
    with open(job_path) as f:
        job = json.load(f)
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = run_case(job, started_s(job_path))
    except Unsupported as exc:
        result = {"status": "unsupported", "error": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - every failure must become a recorded result
        traceback.print_exc()
        result = {"status": "oom" if is_oom(exc) else "failed", "error": f"{type(exc).__name__}: {exc}"}
    if rank == 0:
        try:
            write_json(result_path, result)
        except OutputError as exc:  # a full disk, say: one line in the log; the runner records no result
            log(f"could not write the result: {exc}")
            return 4
    close_process_groups()  # after the result is safe: a teardown that hangs is the runner's exit watcher's
    return 0 if result["status"] == "ok" else 3


RUNNER_POLL_S = 0.5
LATE_S = 60.0  # past the case's timeout: the runner kills at the timeout; this is for a runner that cannot


def watch_runner(job: dict[str, Any]) -> None:
    """A case process never outlives the runner that started it: a daemon thread polls the runner (its pid and
    start time, from the job) and kills this process's group (the process and what it started) when the runner
    is gone (killed with SIGKILL, say, so it could not kill its cases) or the case's timeout is LATE_S past.
    Not for a job run in the runner's own process (--inline), on another host (a multi-node job file copied
    there), or with `runner_pid` null (a job file run by hand)."""
    pid = job.get("runner_pid")
    if not pid or pid == os.getpid() or job.get("runner_host") not in (None, socket.gethostname()):
        return
    timeout = (job.get("case") or {}).get("timeout_s") or (job.get("measure") or {}).get("timeout_s")
    deadline = time.monotonic() + timeout + LATE_S if timeout else None
    threading.Thread(target=_watch, args=(pid, job.get("runner_started"), deadline), daemon=True,
                     name="harness-runner-watch").start()


def _watch(pid: int, started: float | None, deadline: float | None) -> None:
    tick = threading.Event()
    while not tick.wait(RUNNER_POLL_S):
        late = deadline is not None and time.monotonic() > deadline
        if late or not runner_alive(pid, started):
            why = "its timeout passed" if late else f"the runner (pid {pid}) that started it is gone"
            log(f"exiting: {why}; a case process never outlives its runner (to run a job file by hand, set its "
                "runner_pid to null)")
            os.killpg(os.getpgrp(), signal.SIGKILL)


def runner_alive(pid: int, started: float | None) -> bool:
    """Whether process `pid` still runs and is the one that started at `started` (psutil create_time: a pid
    reused by another process is not the runner); a zombie is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 0.01
    except psutil.Error:
        return False


def end_leftovers() -> None:
    """Kill every process this one started that still runs (a plugin's helper, a pool, a subprocess that
    escaped into a session of its own): nothing a case starts outlives it."""
    import psutil

    leftovers = psutil.Process().children(recursive=True)
    if leftovers:
        log(f"ending {len(leftovers)} process(es) the case left running: "
            + ", ".join(f"{p.pid}" for p in leftovers[:8]))
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(leftovers, timeout=5)


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
    recipe = case.get("recipe")
    if recipe:  # every configuration of the design a side, the baseline first (harness.core.recipe)
        pairs = tuple((c["label"], c["plugins"]) for c in recipe["configs"])
    elif case.get("alone"):
        pairs = (("optimized", case["plugins"]),)
    else:
        pairs = (("baseline", case["baseline"]), ("optimized", case["plugins"]))
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
    isolation = Isolation(sides)  # what one side's build changes of torch's global state, kept from the other
    if not timing_only:
        isolation.begin("baseline")
        warm_runtime(workload, spec, sides.get("baseline", []), ctx, dist)
    phase("runtime")
    machine = Machine(device, dist, threads, rank_threads)
    built = [Side(name, opts) for name, opts in sides.items()]
    for side in built:
        log(f"building {side.name}")
        before = memory.current_bytes(device) if dist.rank == 0 else None
        isolation.begin(side.name)
        side.run = workload.build(spec, side.opts, ctx)
        isolation.applied(side.name)
        if timing_only or not machine.owns(side.run):
            dist.barrier()
            continue
        machine.use_threads(side.run)
        side.outputs = side.run.outputs()
        # compile / capture / lazy init happen at the run's first work, in outputs(): never a sample
        clock = machine.clock(side.run)
        side.first_call_s = (clock.reduce(side.run.first_call_s) if side.run.first_call_s is not None
                             else clock.time(side.run.timed_step))
        side.peak = memory.peak_of(side.run.timed_step, device)
        if before is not None and side.peak["peak"] is not None:
            side.peak["side_peak"] = side.peak["peak"] - before
        dist.barrier()
    phase("build")
    by_name = {side.name: side for side in built}
    baseline = by_name.get("baseline")
    if machine.cuda and baseline and not timing_only:
        log("repeating the baseline's correctness pass (CUDA kernels are not deterministic)")
        isolation.begin("baseline")
        noise = repeat_noise_pass(workload, spec, baseline.opts, ctx, baseline.outputs,
                                  owned=machine.owns(baseline.run))
        isolation.rebuilt("baseline")
        dist.barrier()
        if noise is not None and dist.rank == 0:
            baseline.outputs["noise"] = noise
    checks = []
    if dist.rank == 0 and not timing_only:
        if recipe:
            checks = recipe_checks(recipe, sides, {side.name: side.outputs for side in built}, by_name)
        else:
            checks = run_checks(sides, {side.name: side.outputs for side in built})
    for side in built:
        side.outputs = None
    gc.collect()
    phase("checks")

    for side in built:
        if machine.owns(side.run):
            log(f"warming up {side.name}")
            machine.use_threads(side.run)
            isolation.use(side.name)
            side.warm = warm_up(side.run.timed_step, machine.clock(side.run), settings,
                                (settled or {}).get(side.name))
        dist.barrier()
    phase("warmup")
    for side in built:
        side.run.timed = True
    isolation.timing()
    timing, load_record, clocks_log = time_pairs(by_name, settings, machine, job.get("process", 0),
                                                 job.get("runner_pid"), isolation)
    for side in built:
        side.run.timed = False
    phase("timing")
    for side in built:  # on every rank that runs the side: extra_metrics may use collectives
        if not timing_only and machine.owns(side.run):  # a later process keeps its first process's figures
            isolation.use(side.name)
            side.extra = side.run.extra_metrics(statistics.median(s for b in timing.blocks[side.name] for s in b))
        dist.barrier()

    phase("extras")
    result = None
    if dist.rank == 0:
        summarize = summarize_recipe if recipe else summarize_case
        result = summarize(by_name, timing, checks, settings, clocks_log, load_record, machine, isolation)
        result["measurement"].update(phases_s=phases, timing_only=timing_only)
    isolation.restore()
    dist.barrier()
    dist.close()
    return result if result is not None else {"status": "ok"}


@dataclass
class Side:
    """One side of the case in this process: its optimizations, its run, and what was measured of it."""

    name: str  # "baseline" or "optimized"
    opts: list
    run: Any = None
    outputs: dict[str, Any] | None = None  # the correctness pass, until the checks have read it
    first_call_s: float | None = None  # the run's first unit of work: compile, capture, lazy init
    peak: dict[str, Any] | None = None  # memory.peak_of one timed step
    warm: Any = None  # timing.Warmup
    extra: dict[str, Any] = field(default_factory=dict)  # run.extra_metrics at the median
    checks: list[dict[str, Any]] = field(default_factory=list)  # a recipe configuration's, against the baseline


class Machine:
    """This process's device, ranks and threads, and the clocks a side is timed with."""

    def __init__(self, device: Any, dist: Distributed, threads: int, rank_threads: int):
        self.device, self.dist, self.threads, self.rank_threads = device, dist, threads, rank_threads
        self.cuda = device.type == "cuda"
        self.clock_dist, self.clock_local = Clock(device, reduce=dist.max), Clock(device)

    def owns(self, run: Any) -> bool:
        """Whether this rank executes `run`: every rank for a distributed run, rank 0 alone otherwise."""
        return owns(run, self.dist)

    def clock(self, run: Any) -> Clock:
        """A distributed run's times are the slowest rank's (all_reduce MAX, T11); a one-process side's its own."""
        return self.clock_dist if run.distributed else self.clock_local

    def use_threads(self, run: Any) -> None:
        with_threads(run, self.dist, self.threads, self.rank_threads)


def time_pairs(sides: dict[str, Side], settings: MeasureSettings, machine: Machine, seed: int,
               runner_pid: int | None, isolation: Isolation | None = None):
    """Time the sides in pairs of blocks (harness.core.timing.paired_blocks), reading the foreign load and, on CUDA,
    the clocks between pairs on rank 0; each block runs with its side's global state (`isolation`, which also
    counts the CPU the other side's leftover threads take meanwhile). Returns the PairedTiming, the foreign-load
    record and the GPU states."""
    import contextlib

    from harness.core.energy import throttle_record, violation_seconds

    dist, device, cuda = machine.dist, machine.device, machine.cuda
    meter = load.LoadMeter(runner_pid) if dist.rank == 0 else None
    if meter:
        meter.start()
    pair_times = [time.perf_counter()]  # each pair's end: the GPU throttle counters are read per pair
    clocks_log = [gpu_state(device, cuda)] if dist.rank == 0 else []
    read_violations = (lambda: violation_seconds(device.index or 0)) if cuda and dist.rank == 0 else None
    violations = [read_violations()] if read_violations else []
    block_samples = {name: block_size(warm_sample_s(s.warm), settings) if s.warm else 1 for name, s in sides.items()}
    iterations = {name: s.warm.iterations if s.warm else 1 for name, s in sides.items()}

    def run_block(name: str, n: int) -> list[float]:
        run, samples = sides[name].run, []
        if machine.owns(run):
            machine.use_threads(run)
            clock = machine.clock(run)
            with isolation.block(name) if isolation else contextlib.nullcontext():
                samples = [clock.time(run.timed_step, iterations[name]) for _ in range(n)]
        dist.barrier()
        return samples

    def on_pair(i: int) -> None:
        if read_violations:
            violations.append(read_violations())
        pair_times.append(time.perf_counter())
        if meter:
            meter.pair_done()
            if cuda and (i + 1) % 5 == 0:
                clocks_log.append(gpu_state(device, cuda))

    def decided(blocks) -> bool:
        if set(blocks) != {"baseline", "optimized"}:  # one side alone, or a recipe's: nothing to decide here
            return True
        return stats.compare(blocks["baseline"], blocks["optimized"], settings.min_effect)["verdict"] != "inconclusive"

    log(f"timing pairs of blocks ({', '.join(f'{s} {n} samples' for s, n in block_samples.items())})")
    timing = paired_blocks(run_block, block_samples, iterations, settings, seed, on_pair,
                           decided if dist.rank == 0 else None,
                           agree=lambda stop: dist.max(float(stop) if dist.rank == 0 else 0.0) > 0)
    record = None
    if meter:
        clocks_log.append(gpu_state(device, cuda))
        windows, weights, pairs = meter.pair_windows()
        gpu_others = load.gpu_processes(device.index or 0, meter.own_pids) if cuda else None
        record = load.summarize(windows, weights, meter.cores, machine.threads, gpu_others, settings.busy_threshold,
                                pairs)
        pair_s = [b - a for a, b in zip(pair_times, pair_times[1:])]
        record["gpu_throttle"] = throttle_record(violations, pair_s) if read_violations else None
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


def summarize_case(sides: dict[str, Side], timing, checks, settings, clocks_log, load_record,
                   machine: Machine, isolation: Isolation | None = None) -> dict[str, Any]:
    """The process's result: each side's latency, throughput, memory, energy and figures; the comparison and its
    verdict (harness.core.stats.compare), withheld where one side's leftover threads ran while the other was
    timed (`isolation`); the checks; the warnings; how it was measured."""
    from harness.core.energy import energy_window

    warnings: list[str] = []
    out: dict[str, Any] = {"status": "ok", "checks": checks}
    for name, side in sides.items():
        run, blocks = side.run, timing.blocks[name]
        samples = [s for b in blocks for s in b]
        latency = stats.summarize(samples, side.warm.iterations, [len(b) for b in blocks])
        warnings += stats.warnings_for(name, samples, [len(b) for b in blocks])
        median = latency["median"]
        mem = side_memory(run, side.peak or {"side_peak": None, "source": None})
        energy = None
        if machine.cuda and settings.energy and not (run.distributed and machine.dist.world_size > 1):  # rank 0
            if isolation:
                isolation.use(name)
            energy = energy_window(run.timed_step, Clock(machine.device).sync, machine.device.index or 0, median)
            if energy and energy.get("warning"):
                warnings.append(f"{name}: energy window {energy['window_s']:.2f} s: {energy['warning']}")
        out[name] = {
            "latency": latency,
            "throughput": {f"{unit}_per_s": count / median for unit, count in run.units.items()},
            "compile_s": side.first_call_s if side.first_call_s is not None else side.warm.first_call_s,
            "memory": mem,
            "energy": energy,
            "extra": side.extra,
            "info": run.info,
            "threads": machine.threads if not run.distributed else machine.rank_threads,
            "distributed": run.distributed,
        }
    busy = load_record["reason"] if load_record and load_record["busy"] else None
    if "baseline" not in sides:
        comparison = {"speedup": None, "ci95": None, "verdict": "n/a", "reason": "timed alone (baseline: none)",
                      "pairs": 0, "min_effect": settings.min_effect}
    else:
        blocks = timing.blocks
        comparison = stats.compare(blocks["baseline"], blocks["optimized"], settings.min_effect, busy=busy)
        unequal = different_work(sides["baseline"].run.units, sides["optimized"].run.units)
        comparison["different_work"] = unequal
        if unequal and comparison["verdict"] != "inconclusive":
            comparison.update(verdict="inconclusive", reason=unequal)
        if unequal:
            warnings.append(unequal)
    side_effects = isolation.judge(comparison, warnings) if isolation and \
        "baseline" in sides else None
    base_peak = (out.get("baseline") or {}).get("memory", {}).get("peak_bytes")
    opt_peak = out["optimized"]["memory"].get("peak_bytes")
    comparison["memory_ratio"] = opt_peak / base_peak if base_peak and opt_peak else None
    measured_peaks = any(s.peak for s in sides.values())
    if not machine.cuda and measured_peaks and max(base_peak or 0, opt_peak or 0) < stats.CPU_MEMORY_RESOLUTION:
        comparison["memory_ratio"] = None
        both = "baseline" in sides
        warnings.append(("memory: both sides' peaks are" if both else "memory: the peak is")
                        + " under 8 MiB, below what RSS measurement resolves" + ("; no memory ratio" if both else ""))
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
        "num_threads": machine.threads, "processes": machine.dist.world_size,
        "warmup_s": {name: s.warm.seconds for name, s in sides.items() if s.warm},
        "warmup_settled": {name: s.warm.settled for name, s in sides.items() if s.warm},
        "settings": {k: v for k, v in settings.__dict__.items()},
        "gpu_state": [s for s in clocks_log if s],
        "side_effects": side_effects,
    }
    return out


def recipe_checks(recipe: dict[str, Any], sides: dict[str, list], outputs: dict[str, dict[str, Any]],
                  by_name: dict[str, Side]) -> list[dict[str, Any]]:
    """Each optimization of each recipe configuration checked against the configuration it changes: the same
    one without it (compile's "loss close to eager" is then eager with LoRA too, checkpointing's "gradients
    equal" bf16 against bf16), or the baseline where the design does not hold that one. Sets each side's
    `checks`; returns them all, each named "CONFIG: CHECK"."""
    by_levels = {tuple(c["levels"]): c["label"] for c in recipe["configs"]}
    names = [f["name"] for f in recipe["factors"]]
    out = []
    for config in recipe["configs"][1:]:
        label, levels = config["label"], config["levels"]
        for i, on in enumerate(levels):
            if not on:
                continue
            parent = by_levels.get(tuple(0 if j == i else v for j, v in enumerate(levels)), "baseline")
            opt = next(o for o in sides[label] if o.name == names[i])
            for check in opt.check(outputs[parent], outputs[label]):
                row = {**check.as_dict(), "against": parent}
                by_name[label].checks.append(row)
                out.append({**row, "name": f"{label}: {row['name']}"})
    return out


def summarize_recipe(sides: dict[str, Side], timing, checks, settings, clocks_log, load_record,
                     machine: Machine, isolation: Isolation | None = None) -> dict[str, Any]:
    """A recipe process's result (harness.core.recipe): each configuration's latency, throughput, memory and
    checks, and each round's block medians by configuration (`recipe_timing`); the runner estimates the effects
    from the rounds of all processes."""
    import dataclasses

    second = list(sides)[1]  # the warnings, load and measurement record of an ordinary case, from two sides
    pair = dataclasses.replace(timing, blocks={"baseline": timing.blocks["baseline"],
                                               "optimized": timing.blocks[second]})
    out = summarize_case({"baseline": sides["baseline"], "optimized": sides[second]}, pair, checks,
                         settings, clocks_log, load_record, machine, None)
    configs = {}
    for name, side in sides.items():
        blocks = timing.blocks[name]
        samples = [s for b in blocks for s in b]
        latency = stats.summarize(samples, side.warm.iterations, [len(b) for b in blocks])
        median = latency["median"]
        configs[name] = {"latency": latency,
                         "throughput": {f"{unit}_per_s": count / median for unit, count in side.run.units.items()},
                         "compile_s": side.first_call_s if side.first_call_s is not None else side.warm.first_call_s,
                         "memory": side_memory(side.run, side.peak or {"side_peak": None, "source": None}),
                         "checks": side.checks, "info": side.run.info, "extra": side.extra}
    rounds = [{name: statistics.median(timing.blocks[name][i]) for name in sides} for i in range(len(timing.orders))]
    leftover: dict[str, Any] = {}
    side_effects = isolation.judge(leftover, out["warnings"]) if isolation else None
    for key in ("baseline", "optimized", "comparison"):
        out.pop(key, None)
    out["recipe_timing"] = {"configs": configs, "rounds": rounds, "interference": leftover.get("interference")}
    out["measurement"].update(design="recipe rounds: every configuration one block per round, random order",
                              order=[",".join(str(list(sides).index(s)) for s in o) for o in timing.orders],
                              side_effects=side_effects,
                              warmup_s={name: s.warm.seconds for name, s in sides.items() if s.warm},
                              warmup_settled={name: s.warm.settled for name, s in sides.items() if s.warm})
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
