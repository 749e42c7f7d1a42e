"""A case's two sides, built and checked one way for `harness run` (the worker) and the pytest plugin alike."""

from __future__ import annotations

import gc
import os
import time
from typing import Any

from harness.core.optimization import Optimization, applies_to, build_params


class Unsupported(Exception):
    """An optimization does not support this environment; the case is recorded as "unsupported"."""


def build_sides(registry: Any, uses: dict[str, list[tuple[str, dict[str, Any]]]], env: dict[str, Any],
                workload: Any) -> dict[str, list[Optimization]]:
    """Each side's optimizations for `workload` (a Workload class), built from its uses [(name, params)] in order
    ({"baseline": [...], "optimized": [...]}, or the optimized side alone); ValueError for one that does not
    apply to that workload; Unsupported naming the first that cannot run here."""
    sides = {}
    for side, side_uses in uses.items():
        opts = []
        for name, params in side_uses:
            cls = registry.optimizations[name]
            elsewhere = applies_to(cls, workload)
            if elsewhere:
                raise ValueError(f"'{name}' applies to {elsewhere}")
            opt = cls(build_params(cls.Params, params))
            reason = opt.supports(env)
            if reason:
                raise Unsupported(f"{name}: {reason}")
            opts.append(opt)
        sides[side] = opts
    return sides


def differing(optimizations: list, baseline: list) -> list:
    """The optimizations whose invariant this case tests: those not also applied, with the same parameters, to
    the baseline (a shared KV cache is set-up common to both sides, not what is compared)."""
    shared = {(o.name, repr(o.params)) for o in baseline}
    return [o for o in optimizations if (o.name, repr(o.params)) not in shared]


def repeat_noise_pass(workload: Any, spec: Any, baseline_opts: list, ctx: Any, first: dict | None,
                      owned: bool = True) -> dict | None:
    """A second correctness pass of a fresh baseline (same seed) and how far it lands from the first
    (harness.core.checks.repeat_noise); the callers ask it on CUDA, where atomics in attention backward and reductions
    are not deterministic. The checks then allow a multiple of that noise, and say so in their tolerance. None for
    workloads without tensors to compare (generation compares tokens with the near-tie rule) or where this rank
    does not own the run."""
    from harness.core.checks import repeat_noise

    if workload.kind != "training":
        return None
    run = workload.build(spec, baseline_opts, ctx)
    noise = repeat_noise(first, run.outputs()) if owned and first is not None else None
    del run
    gc.collect()
    return noise


def run_checks(sides: dict[str, list], outputs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every check of every optimization under test (`differing`), baseline outputs against optimized ones."""
    if "baseline" not in sides:
        return []
    return [c.as_dict() for opt in differing(sides["optimized"], sides["baseline"])
            for c in opt.check(outputs["baseline"], outputs["optimized"])]


MISSING = object()  # an attribute absent from its owner
THREAD_SHARE = 0.05  # the CPU share one side's leftover threads or processes take while the other is timed that
# interferes (an idle pool takes none)


def _torch_owners() -> list[tuple[str, Any]]:
    """The namespaces an apply() can patch that every workload uses: torch, torch.nn.functional, torch.linalg,
    torch.nn.init, torch.Tensor and every nn.Module class torch.nn exports."""
    import torch
    import torch.nn.functional as F

    owners = [("torch", torch), ("torch.nn.functional", F), ("torch.linalg", torch.linalg),
              ("torch.nn.init", torch.nn.init), ("torch.Tensor", torch.Tensor), ("torch.nn.Module", torch.nn.Module)]
    owners += [(f"torch.nn.{n}", c) for n, c in vars(torch.nn).items()
               if isinstance(c, type) and issubclass(c, torch.nn.Module) and c is not torch.nn.Module]
    return owners


def _flags() -> dict[str, tuple[Any, Any]]:
    """Global torch settings that change what a step computes or how fast: label -> (get, set)."""
    import torch

    def attr(obj: Any, name: str) -> tuple[Any, Any]:
        return (lambda: getattr(obj, name)), (lambda v: setattr(obj, name, v))

    out = {"torch.get_default_dtype()": (torch.get_default_dtype, torch.set_default_dtype),
           "torch.get_float32_matmul_precision()": (torch.get_float32_matmul_precision,
                                                    torch.set_float32_matmul_precision),
           "torch.are_deterministic_algorithms_enabled()": (
               lambda: (torch.are_deterministic_algorithms_enabled(),
                        torch.is_deterministic_algorithms_warn_only_enabled()),
               lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1])),
           "torch.is_grad_enabled()": (torch.is_grad_enabled, torch.set_grad_enabled),
           "torch.is_anomaly_enabled()": (torch.is_anomaly_enabled, torch.set_anomaly_enabled)}
    if hasattr(torch, "get_default_device"):
        out["torch.get_default_device()"] = (torch.get_default_device, torch.set_default_device)
    for prefix, obj, names in (
            ("torch.backends.cuda.matmul", torch.backends.cuda.matmul,
             ("allow_tf32", "allow_fp16_reduced_precision_reduction", "allow_bf16_reduced_precision_reduction",
              "fp32_precision")),
            ("torch.backends.cudnn", torch.backends.cudnn,
             ("enabled", "benchmark", "deterministic", "allow_tf32", "fp32_precision")),
            ("torch.backends.mkldnn", torch.backends.mkldnn, ("enabled",))):
        for name in names:
            try:
                getattr(obj, name)
            except Exception:  # a setting this torch does not have
                continue
            out[f"{prefix}.{name}"] = attr(obj, name)
    return out


def _snapshot(flags: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    import warnings

    state = {f"{label}.{name}": value for label, owner in _torch_owners() for name, value in vars(owner).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates reading some TF32 flags
        state.update({label: get() for label, (get, _) in flags.items()})
    return state


def _torch_own(value: Any) -> bool:
    """Whether a new value is torch's own set-up (a submodule imported lazily, torch.compile wrapping
    torch.manual_seed) rather than a plugin's replacement: where its code lives, not its __module__, which
    functools.wraps copies from the function replaced."""
    import types

    import torch

    if isinstance(value, types.ModuleType):
        return True
    inner = getattr(value, "fget", None) or getattr(value, "__func__", None) or value
    code = getattr(inner, "__code__", None)
    if code is not None:
        return code.co_filename.startswith(os.path.dirname(torch.__file__) + os.sep)
    return str(getattr(value, "__module__", None) or "").startswith("torch")


class Isolation:
    """Keeps one side's changes to global state from the other side (docs/plugins.md, "Global state").

    Both sides run in one process, so a plugin whose apply() replaces a global (F.gelu, a torch.Tensor method,
    torch.nn.Module.forward) or sets a torch flag (TF32, cudnn.benchmark, the default dtype, deterministic
    algorithms) outside `run.contexts` would reach the baseline too. Each side is built from the state as it was
    before any side (`begin`), its changes are read after its build (`applied`), and `use(side)` installs that
    side's state (the untouched one plus its own changes) before each of its blocks: the change is isolated and
    the case says so. Threads and child processes a side leaves running cannot be isolated: `block` measures the
    CPU they take while the other side is timed, and `judge` withholds the verdict when that is more than
    THREAD_SHARE of a CPU (an idle pool, a compile worker waiting for work, takes none)."""

    def __init__(self, sides: dict[str, list[Optimization]]):
        import threading

        self.opts = sides
        self.flags = _flags()
        self.pristine = _snapshot(self.flags)
        self.changes: dict[str, dict[str, Any]] = {}  # side -> {label: its value}
        self.threads: dict[str, list[Any]] = {}  # side -> threads started while it was built
        self.known = set(threading.enumerate())
        self.processes: dict[str, list[Any]] = {}  # side -> psutil.Process started while it was built
        self.procs_known = set(_descendants())
        self.parent: dict[Any, int] = {}  # leftover process -> its parent's pid when first seen
        self.proc_names: dict[Any, str] = {}
        self.proc_used: dict[Any, float] = {}  # leftover process -> CPU seconds during the other side's blocks
        self.proc_stolen: dict[str, float] = {}  # side -> CPU seconds the other side's processes used meanwhile
        self.building: str | None = None
        self.active: str | None = None
        self.stolen: dict[str, float] = {}  # side -> CPU seconds the other side's threads used during its blocks
        self.timed: dict[str, float] = {}  # side -> wall seconds of its blocks

    def who(self, side: str) -> str:
        """"plugin X (optimized side)": what changed the state while `side` was built."""
        names = [o.name for o in self.opts.get(side, [])]
        if not names:
            return f"the {side} side"
        return f"plugin{'s' if len(names) > 1 else ''} {', '.join(names)} ({side} side)"

    def begin(self, side: str) -> None:
        """Before `side` is built: the state as no side changed it, and threads from here on are its."""
        self._close_window()
        self._install({label: self.pristine.get(label, MISSING) for label in self._labels()})
        self.building = side

    def applied(self, side: str) -> None:
        """After `side` is built: what its build changed is its own state."""
        state = _snapshot(self.flags)
        changed = {}
        for label in set(self.pristine) | set(state):
            before, after = self.pristine.get(label, MISSING), state.get(label, MISSING)
            same = before == after if label in self.flags else before is after
            if not same and not _torch_own(after) and not label.endswith("__warningregistry__"):
                changed[label] = after
        self.changes[side] = changed
        self.active = side

    def rebuilt(self, side: str) -> None:
        """After `side` was built again (the repeated correctness pass): its first build's state again."""
        self.active = None
        self.use(side)

    def use(self, side: str) -> None:
        """Install `side`'s state before its blocks (nothing to do when no side changed any)."""
        if self.active != side and self._labels():
            view = self.changes.get(side, {})
            self._install({label: view.get(label, self.pristine.get(label, MISSING)) for label in self._labels()})
        self.active = side

    def restore(self) -> None:
        """The state as no side changed it (after the case, for an in-process run)."""
        self.begin("")
        self.building = None

    def _labels(self) -> list[str]:
        return sorted({label for changed in self.changes.values() for label in changed})

    def _install(self, state: dict[str, Any]) -> None:
        import warnings

        owners = dict(_torch_owners())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for label, value in state.items():
                if label in self.flags:
                    self.flags[label][1](value)
                    continue
                owner_label, _, name = label.rpartition(".")
                owner = owners[owner_label]
                if value is MISSING:
                    if name in vars(owner):
                        delattr(owner, name)
                else:
                    setattr(owner, name, value)

    def _close_window(self) -> None:
        import threading

        alive = set(threading.enumerate())
        if self.building:
            self.threads.setdefault(self.building, []).extend(t for t in alive - self.known)
        self.known |= alive
        procs = _descendants()
        if self.building:
            new = [p for p in procs if p not in self.procs_known]
            self.processes.setdefault(self.building, []).extend(new)
            for proc in new:
                self.parent[proc], self.proc_names[proc] = procs[proc]
        self.procs_known |= set(procs)
        self.building = None

    def timing(self) -> None:
        """Before the timed pairs: the last side's thread window closes."""
        self._close_window()

    def block(self, side: str):
        """Context around one of `side`'s timed blocks: its state installed, and the CPU time the other sides'
        leftover threads take meanwhile counted."""
        import contextlib

        @contextlib.contextmanager
        def measured():
            self.use(side)
            others = [t for s, ts in self.threads.items() if s != side for t in ts if t.is_alive()]
            procs = [p for s, ps in self.processes.items() if s != side for p in ps]
            start_procs = _proc_cpu(procs)
            start_cpu, start = _cpu(others), time.perf_counter()
            yield
            self.timed[side] = self.timed.get(side, 0.0) + time.perf_counter() - start
            end_cpu = _cpu(others)
            end_procs = _proc_cpu(list(start_procs))
            used = sum(end_cpu[t] - start_cpu[t] for t in end_cpu if t in start_cpu)
            self.stolen[side] = self.stolen.get(side, 0.0) + used
            self._count_processes(side, start_procs, end_procs)

        return measured()

    def _count_processes(self, side: str, start: dict[Any, float], end: dict[Any, float]) -> None:
        """Add the CPU the other sides' leftover processes used during one of `side`'s blocks. A reading holds
        the children a process reaped (children_user/system): a leftover that ended and was reaped by another
        leftover meanwhile moved its whole total into its parent's reading, so its first reading comes off."""
        pids = {p.pid for p in end}
        for proc, before in start.items():
            if proc in end:
                delta = end[proc] - before
            elif self.parent.get(proc) in pids:
                delta = -before
            else:
                continue
            self.proc_used[proc] = self.proc_used.get(proc, 0.0) + delta
            self.proc_stolen[side] = self.proc_stolen.get(side, 0.0) + delta

    def judge(self, comparison: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
        """What the case says of the sides' global state: a warning per isolated change; for leftover threads
        that took CPU while the other side was timed, the verdict withheld (`comparison["interference"]`) with
        the reason. Returns the record kept in the case's measurement block."""
        isolated = {side: sorted(changed) for side, changed in self.changes.items() if changed}
        for side, labels in isolated.items():
            shown = ", ".join(labels[:4]) + (f" and {len(labels) - 4} more" if len(labels) > 4 else "")
            warnings.append(f"{self.who(side)} changed global state in apply(): {shown}; the harness isolated it "
                            "(each side timed with its own), but declare it in run.contexts (docs/plugins.md)")
        threads = {}
        for side, ts in self.threads.items():
            for victim in self.timed:
                if victim == side or not ts:
                    continue
                share = self.stolen.get(victim, 0.0) / self.timed[victim] if self.timed[victim] else 0.0
                names = ", ".join(f"'{t.name}'" for t in ts)
                threads[side] = {"threads": [t.name for t in ts], "cpu_share": share, "during": victim}
                if share >= THREAD_SHARE:
                    reason = (f"{self.who(side)} left thread {names} running during timing: it used {share:.0%} "
                              f"of a CPU while the {victim}'s blocks were timed, so the {victim} ran with it")
                    warnings.append(f"{reason}; no faster/slower verdict (stop the thread when the step "
                                    "returns, or start it only inside the step)")
                    if "interference" not in comparison:
                        comparison.update(verdict="inconclusive", reason=reason, interference=reason)
        processes = {side: self._judge_processes(side, comparison, warnings)
                     for side, ps in self.processes.items() if ps and any(v != side for v in self.timed)}
        return {"isolated": isolated, "threads": threads, "processes": processes}

    def _judge_processes(self, side: str, comparison: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
        """The record of the processes `side` left running, the verdict withheld (a warning too) where they took
        more than THREAD_SHARE of a CPU while the other side was timed."""
        victim = next(v for v in self.timed if v != side)
        share = self.proc_stolen.get(victim, 0.0) / self.timed[victim] if self.timed[victim] else 0.0
        procs = self.processes[side]
        record = {"processes": [{"pid": p.pid, "name": self.proc_names[p],
                                 "cpu_s": round(self.proc_used.get(p, 0.0), 4)} for p in procs],
                  "cpu_share": share, "during": victim}
        if share >= THREAD_SHARE:
            busy = sorted((p for p in procs if self.proc_used.get(p, 0.0) > 0), key=lambda p: -self.proc_used[p])
            shown = ", ".join(f"{p.pid} ('{self.proc_names[p]}')" for p in busy[:3])
            shown += f" and {len(busy) - 3} more" if len(busy) > 3 else ""
            many = len(busy) > 1
            reason = (f"{self.who(side)} left process{'es' if many else ''} {shown} running during timing: "
                      f"{'they' if many else 'it'} used {share:.0%} of a CPU while the {victim}'s blocks were timed, "
                      f"so the {victim} ran with {'them' if many else 'it'}")
            warnings.append(f"{reason}; no faster/slower verdict (end the process before apply() returns, or "
                            "start it only inside the step and wait for it there)")
            if "interference" not in comparison:
                comparison.update(verdict="inconclusive", reason=reason, interference=reason)
        return record


def _descendants() -> dict[Any, tuple[int, str]]:
    """Every process this one started that still runs (psutil.Process, equal by pid and start time) -> (its
    parent's pid, its name)."""
    import psutil

    out = {}
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return out
    for proc in children:
        try:
            out[proc] = (proc.ppid(), proc.name())
        except psutil.Error:  # ended meanwhile
            pass
    return out


def _proc_cpu(procs: list[Any]) -> dict[Any, float]:
    """CPU seconds each of the live `procs` and the children it reaped have used so far."""
    import psutil

    out = {}
    for proc in procs:
        try:
            t = proc.cpu_times()
            out[proc] = t.user + t.system + t.children_user + t.children_system
        except psutil.Error:  # ended
            pass
    return out


def _cpu(threads: list[Any]) -> dict[Any, float]:
    """CPU seconds each of the live `threads` has used so far."""
    out = {}
    for t in threads:
        try:
            out[t] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, AttributeError, TypeError, OverflowError):  # ended, or not a thread of this process
            pass
    return out
