"""The workload contract: what a case measures (a training step, a generation), built once per side of a case."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import statistics
import time
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from harness.core.device import sync  # noqa: F401 (re-exported: harness.core.workload.sync)
from harness.core.errors import suggestion
from harness.core.optimization import validate_in_side


class Knobs:
    """Base of a run's typed knobs (subclass it with a dataclass): assigning a name that is not a field, or a value
    outside a `Literal` field's choices, raises at once, inside the plugin's `apply`, so a typo fails the case
    instead of silently measuring the baseline against itself."""

    def __setattr__(self, name: str, value: Any) -> None:
        fields = [f.name for f in dataclasses.fields(self)]
        if name not in fields:
            raise AttributeError(f"{type(self).__name__} has no knob '{name}'{suggestion(name, fields)}")
        choices = literal_choices(type(self)).get(name)
        if choices is not None and value not in choices:
            raise ValueError(f"{type(self).__name__}.{name} must be one of {', '.join(map(repr, choices))} "
                             f"(got {value!r})")
        object.__setattr__(self, name, value)


@functools.cache
def literal_choices(cls: type) -> dict[str, tuple]:
    """The allowed values of each `Literal[...]` (or `Literal[...] | None`) field of dataclass `cls`."""
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        literals = [a for o in options if typing.get_origin(o) is Literal for a in typing.get_args(o)]
        if literals:
            out[name] = tuple(literals) + ((None,) if type(None) in options else ())
    return out


@dataclass
class RunContext:
    """Where a run is built: device, environment block, seed and, under torchrun, rank and world size.

    `case_dir`: a folder the case's processes share (None when there is none, e.g. in the pytest plugin): an
    optimization keeps there what is costly to make and the same in every process (a trained student, say),
    keyed by everything it depends on (`cache_path`)."""

    device: Any  # torch.device
    env: dict[str, Any]
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    threads: int = 1
    case_dir: str | None = None

    def cache_path(self, name: str, key: Any) -> Any:
        """`case_dir`/NAME-HASH.pt for an artifact determined by `key` (any JSON-able value), or None without a
        case folder. Write it with harness.core.results.write_bytes (atomic): a process may be killed mid-write."""
        if not self.case_dir:
            return None
        import hashlib
        import json
        from pathlib import Path

        digest = hashlib.sha256(json.dumps([key, self.seed, str(self.device)], sort_keys=True, default=str)
                                .encode()).hexdigest()[:16]
        return Path(self.case_dir) / f"{name}-{digest}.pt"


class Run:
    """A built workload, ready to be timed. The worker calls `outputs()` once, then `step()` many times.

    Attributes a workload sets and optimizations may change:
      units: work done by one `step()`, e.g. ``{"tokens": 2048, "samples": 8}``; throughput = units / time.
      contexts: context-manager factories entered around every `step()` call (autocast, flags).
      distributed: under torchrun, True if every rank runs `step()`; False if only rank 0 does (a
        single-process baseline), the other ranks waiting.
      info: free-form facts to report (dtype in use, policy chosen, cache kind, ...).
      first_call_s: the synchronized wall time of the run's first unit of work, wherever it happens (the first
        step of `outputs()`): compile, CUDA-graph capture and lazy initialisation land there, so it is the
        one-time cost the report shows as `compile_s`. None until the run records it (with `synced`).
      timed: True only while the worker (or the pytest plugin) runs the timed blocks. Per-call records that
        feed `extra_metrics` (served requests, draft acceptance counts) are kept only then, so every metric
        beside the latency statistics describes the timed calls, not the correctness pass, the memory probe
        or the warm-up (docs/results.md).
    """

    ctx: RunContext
    info: dict[str, Any]
    units: dict[str, float]
    contexts: list[Any]
    distributed: bool
    timed: bool
    first_call_s: float | None

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.units: dict[str, float] = {}
        self.contexts: list[Any] = []
        self.distributed = False
        self.info: dict[str, Any] = {}
        self.timed = False
        self.first_call_s: float | None = None

    def median_time(self, fn: Callable[[], Any], repeats: int) -> float:
        """Median of `repeats` synchronized calls of fn (`synced`): the figures measured beside the timed blocks
        (TTFT, a draft's forward), outside the samples."""
        return statistics.median(self.synced(fn)[1] for _ in range(repeats))

    def synced(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        """(fn(), its wall time in seconds with the device synchronized before and after): how a workload times
        the parts of its first unit of work for `first_call_s`."""
        sync(self.ctx.device)
        start = time.perf_counter()
        out = fn()
        sync(self.ctx.device)
        return out, time.perf_counter() - start

    def step(self) -> None:
        """One timed unit of work (no synchronization: the timer does that)."""
        raise NotImplementedError

    def outputs(self) -> dict[str, Any]:
        """A deterministic correctness pass whose results the optimizations' `check` compare."""
        return {}

    def memory(self) -> dict[str, int]:
        """Bytes held by this run's tensors, by category (weights, gradients, optimizer_states, kv_cache...)."""
        return {}

    def extra_metrics(self, median_s: float) -> dict[str, Any]:
        """Metrics derived from the median step time (MFU, TTFT, TPOT, ...); called after timing."""
        return {}

    def timed_step(self) -> None:
        """`step()` inside this run's contexts; what the timer calls."""
        with contextlib.ExitStack() as stack:
            for make_context in self.contexts:
                stack.enter_context(make_context())
            self.step()


@dataclass
class NoSpec:
    """Settings of a workload that takes none."""


class Workload:
    """A kind of work to measure. Subclass: set `name`, `kind`, `Spec` and `run_class` (or override `build`)."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""  # "training" or "inference"
    description: ClassVar[str] = ""
    Spec: ClassVar[type] = NoSpec
    run_class: ClassVar[type | None] = None  # what `build` makes: run_class(spec, ctx)
    # searches (harness.core.searches.Search subclasses) a case of this workload may ask for, each a block of
    # the case named by its key, beside those every workload offers (capacity:)
    searches: ClassVar[tuple[type, ...]] = ()

    def build(self, spec: Any, optimizations: list[Any], ctx: RunContext) -> Run:
        """Make a fresh run (same seed every time), apply each optimization to it in order, then `finish` it.
        Each optimization's `validate` runs first, on every path that builds a run (the worker, a search's probe,
        the pytest plugin), so `apply` need not repeat its checks."""
        if self.run_class is None:
            raise NotImplementedError(f"{type(self).__name__} sets no run_class and does not override build")
        for opt in optimizations:
            validate_in_side(opt, spec, optimizations)
        run = self.run_class(spec, ctx)
        for opt in optimizations:
            opt.apply(run)
        self.finish(run)
        return run

    def finish(self, run: Run) -> None:
        """What follows from the optimizations applied, recorded after them (the run's final units, facts)."""

