"""pytest plugin: run a harness case as a pytest test through pytest-benchmark's `benchmark` fixture (O4).

    def test_bf16(harness_case):
        harness_case("train", {"model": "nano", "batch": 4, "seq_len": 64}, plugins=["mixed_precision"])

The fixture builds the baseline and the optimized run (same seed), fails the test if an invariant check fails,
then times one side with `benchmark.pedantic` (each call ends with a CUDA synchronize, so the host clock sees
the GPU work) and puts the harness metrics in `benchmark.extra_info`. With `compare=True` it also times both sides
in paired blocks and records the speedup, interval and verdict of `harness.core.stats.compare`, the rule `harness run`
uses (never asserted: performance belongs in reports, not in test outcomes). Those pairs are timed in the test's
one process, so that interval covers the noise within it only (`comparison.processes` is 1); `harness compare`
of such files applies the one-process margins and says so. `--benchmark-disable` runs each step
once: the test is then a correctness test. `--benchmark-json out.json` writes a file `harness compare` reads.
Enabled by the `pytest11` entry point, or `-p harness.pytest_plugin`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from harness.core.optimization import build_params
from harness.core.plugins import load_registry
from harness.core.sides import Isolation, Unsupported, build_sides, repeat_noise_pass, run_checks
from harness.core.workload import RunContext


def _uses(items: Any) -> list[tuple[str, dict[str, Any]]]:
    """Plugin uses as (name, params): names, or {name: {param: value}} mappings, as in a suite."""
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, {}))
        else:
            out += [(name, dict(params or {})) for name, params in item.items()]
    return out


def run_case(benchmark: Any, workload: str, spec: dict[str, Any] | None = None, plugins: Any = (),
             baseline: Any = (), side: str = "optimized", rounds: int = 10, warmup_rounds: int = 3,
             device: str = "cpu", threads: int | None = None, seed: int = 0,
             compare: bool = False, measure: Any = None) -> dict[str, Any]:
    """Check the case's invariants, time `side` ("baseline" or "optimized") with `benchmark.pedantic`, and
    return the extra_info recorded (checks, units, memory, info, extra metrics, throughput; with `compare`, the
    paired comparison of both sides under `measure`, a harness.core.timing.MeasureSettings)."""
    import torch

    from harness.core import env as harness_env

    if side not in ("baseline", "optimized"):
        raise ValueError(f"side must be 'baseline' or 'optimized', got {side!r}")
    registry = load_registry()
    env = harness_env.detect(device, threads)
    wl = registry.workloads[workload]()
    ctx = RunContext(device=torch.device(env["device"]), env=env, seed=seed,
                     threads=torch.get_num_threads())
    try:
        sides = build_sides(registry, {"baseline": _uses(baseline), "optimized": _uses(plugins)}, env, type(wl))
    except Unsupported as exc:
        pytest.skip(str(exc))
    workload_spec = build_params(wl.Spec, spec or {})
    isolation = Isolation(sides)  # a plugin's global patch reaches neither the other side's outputs nor its times
    try:
        return _measure(benchmark, wl, workload_spec, sides, ctx, isolation, dict(
            workload=workload, spec=spec, plugins=plugins, side=side, rounds=rounds, warmup_rounds=warmup_rounds,
            compare=compare, measure=measure))
    finally:
        isolation.restore()


def _measure(benchmark: Any, wl: Any, workload_spec: Any, sides: dict[str, list], ctx: RunContext,
             isolation: Isolation, how: dict[str, Any]) -> dict[str, Any]:
    """`run_case`'s work once the sides are known: build (each side in its own global state), check, time."""
    import torch

    workload, spec, plugins, side = how["workload"], how["spec"], how["plugins"], how["side"]
    rounds, warmup_rounds, compare, measure = how["rounds"], how["warmup_rounds"], how["compare"], how["measure"]
    runs, outputs = {}, {}
    for name, opts in sides.items():  # as the worker: each side built, and its outputs taken, in its own state
        isolation.begin(name)
        runs[name] = wl.build(workload_spec, opts, ctx)
        isolation.applied(name)
        outputs[name] = runs[name].outputs()
    noise = None
    if ctx.device.type == "cuda":
        isolation.begin("baseline")
        noise = repeat_noise_pass(wl, workload_spec, sides["baseline"], ctx, outputs["baseline"])
        isolation.rebuilt("baseline")
    if noise is not None:
        outputs["baseline"]["noise"] = noise
    checks = run_checks(sides, outputs)  # the worker's checks, the worker's way
    failed = [c for c in checks if not c["passed"]]
    assert not failed, f"invariant checks failed: {failed}"

    run = runs[side]
    sync: Callable[[], None] = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)

    calls = 0

    def step() -> None:
        nonlocal calls
        run.timed = calls >= warmup_rounds  # pedantic runs the warm-up rounds first (Run.timed)
        calls += 1
        run.timed_step()
        sync()  # the host clock stops after the device work, as the harness's wall_sync timer

    benchmark.group = f"{workload}/{'+'.join(n for n, _ in _uses(plugins)) or 'baseline'}"
    isolation.use(side)
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    run.timed = False
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats else None
    info = {"harness_side": side, "workload": workload, "spec": spec or {}, "checks": checks,
            "units": dict(run.units), "memory": run.memory(), "info": dict(run.info), "timer": "wall_sync"}
    if median:
        info["throughput"] = {f"{unit}_per_s": n / median for unit, n in run.units.items()}
        info["extra"] = run.extra_metrics(median)
    if compare:
        info["comparison"] = _paired(runs, ctx.device, measure, isolation)
    benchmark.extra_info.update(info)
    return info


def _paired(runs: dict[str, Any], device: Any, measure: Any, isolation: Isolation) -> dict[str, Any]:
    """Both sides warmed up and timed in paired blocks, compared by harness.core.stats (as a `harness run` case)."""
    from harness.core import stats
    from harness.core.timing import Clock, MeasureSettings, block_size, paired_blocks, warm_sample_s, warm_up

    clock = Clock(device)
    settings = (measure or MeasureSettings()).resolved(clock.cuda)
    steps = {"baseline": runs["baseline"].timed_step, "optimized": runs["optimized"].timed_step}
    warm = {}
    for side, fn in steps.items():
        isolation.use(side)
        warm[side] = warm_up(fn, clock, settings)
    sizes = {s: block_size(warm_sample_s(w), settings) for s, w in warm.items()}
    iterations = {s: w.iterations for s, w in warm.items()}

    def block(side: str, n: int) -> list[float]:
        isolation.use(side)
        return [clock.time(steps[side], iterations[side]) for _ in range(n)]

    timing = paired_blocks(block, sizes, iterations, settings)
    return stats.compare(timing.blocks["baseline"], timing.blocks["optimized"], settings.min_effect)


@pytest.fixture
def harness_case(benchmark: Any) -> Callable[..., dict[str, Any]]:
    """`harness_case(workload, spec, plugins=..., baseline=..., side=...)`: see `run_case`."""
    return lambda *args, **kwargs: run_case(benchmark, *args, **kwargs)
