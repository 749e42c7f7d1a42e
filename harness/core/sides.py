"""A case's two sides, built and checked one way for `harness run` (the worker) and the pytest plugin alike."""

from __future__ import annotations

import gc
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
