"""Timing rules T1, T5, T7 and memory rule M3, on the CPU."""

import inspect
import time

import pytest
import torch

from harness.core import memory, timing
from harness.core.timing import Clock, MeasureSettings, measure

FAST = MeasureSettings(min_samples=5, min_time_s=0.05, max_time_s=1.0, warmup_min_iters=3,
                       warmup_min_s=0.01, warmup_max_s=0.5)


def test_sleep_reads_its_duration():
    result = measure(lambda: time.sleep(0.05), "cpu", MeasureSettings(min_samples=5, min_time_s=0.1,
                                                                       warmup_min_s=0.01, warmup_max_s=0.2))
    assert result["median"] == pytest.approx(0.05, rel=0.05)
    assert result["timer"] == "wall_sync"


def test_slow_first_calls_never_reach_the_samples():
    calls = {"n": 0}

    def workload():
        calls["n"] += 1
        time.sleep(0.02 if calls["n"] <= 3 else 0.002)

    result = measure(workload, "cpu", FAST)
    assert result["compile_s"] >= 0.02  # the first call is reported apart
    assert max(result["data"]) < 0.015


def test_sub_resolution_work_is_timed_in_blocks():
    # an empty call (~0.1 us) is far below 100x the timer's resolution on any machine; a 4-element add_ (~2-5 us)
    # sat on the boundary on the slower 2-core EPYC and made this test flaky
    result = measure(lambda: None, "cpu", FAST)
    assert result["iterations"] > 1
    assert result["median"] < 1e-5


def test_timer_never_uses_wall_clock_time():
    source = inspect.getsource(timing)
    assert "time.time(" not in source and "perf_counter" in source


def test_device_events_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        Clock("cpu", timer="device_events")


def test_samples_respect_count_and_time_bounds():
    settings = MeasureSettings(min_samples=7, min_time_s=0.05, max_time_s=0.3, warmup_min_s=0.01)
    samples = timing.sample(lambda: time.sleep(0.001), Clock("cpu"), settings.resolved(False))
    assert len(samples) >= 7 and sum(samples) >= 0.05
    slow = timing.sample(lambda: time.sleep(0.1), Clock("cpu"), MeasureSettings(min_samples=50, max_time_s=0.3))
    assert 2 <= len(slow) <= 4  # capped by max_time_s


def _fake_sides(costs: dict[str, float]):
    """run_block over a fake clock: each sample of a side takes its fixed cost; records the order of blocks."""
    seen = []

    def run_block(side, n):
        seen.append(side)
        return [costs[side]] * n

    return run_block, seen


def test_pairs_run_both_sides_in_a_seeded_random_order():
    run_block, seen = _fake_sides({"baseline": 0.01, "metrics": 0.01})
    settings = MeasureSettings(min_pairs=20, min_samples=2, min_time_s=0.01).resolved(False)
    result = timing.paired_blocks(run_block, {"baseline": 2, "metrics": 3}, {"baseline": 1, "metrics": 1}, settings)
    assert len(result.orders) == 20 and result.stopped_by == "minimums"
    assert {tuple(o) for o in result.orders} == {("baseline", "metrics"), ("metrics", "baseline")}
    assert all(sorted(seen[2 * i:2 * i + 2]) == ["baseline", "metrics"] for i in range(20))  # each pair: one each
    assert [len(b) for b in result.blocks["baseline"]] == [2] * 20
    assert [len(b) for b in result.blocks["metrics"]] == [3] * 20
    again = timing.paired_blocks(_fake_sides({"baseline": 0.01, "metrics": 0.01})[0], {"baseline": 2, "metrics": 3},
                                 {"baseline": 1, "metrics": 1}, settings)
    assert again.orders == result.orders  # same seed, same order: every rank of a torchrun case agrees


def test_pairs_stop_at_the_time_budget():
    run_block, _ = _fake_sides({"baseline": 1.0, "metrics": 1.0})
    settings = MeasureSettings(min_pairs=50, min_samples=2, max_time_s=5.0).resolved(False)
    result = timing.paired_blocks(run_block, {"baseline": 1, "metrics": 1}, {"baseline": 1, "metrics": 1}, settings)
    assert result.stopped_by == "budget" and len(result.orders) == 5
    short = MeasureSettings(min_pairs=50, min_samples=2, max_time_s=2.0).resolved(False)
    result = timing.paired_blocks(run_block, {"baseline": 1, "metrics": 1}, {"baseline": 1, "metrics": 1}, short)
    assert len(result.orders) == 5  # the budget never cuts a case below the pairs a verdict needs


def test_until_conclusive_adds_pairs_only_while_undecided():
    settings = MeasureSettings(min_pairs=10, min_samples=2, min_time_s=0.01, max_time_s=100.0,
                               until_conclusive=True).resolved(False)
    checks = []

    def decided_after(n):
        def decided(blocks):
            checks.append(len(blocks["baseline"]))
            return len(blocks["baseline"]) >= n
        return decided

    run_block, _ = _fake_sides({"baseline": 0.01, "metrics": 0.01})
    clear = timing.paired_blocks(run_block, {"baseline": 1, "metrics": 1}, {"baseline": 1, "metrics": 1}, settings,
                                 decided=decided_after(0))
    assert len(clear.orders) == 10 and clear.stopped_by == "conclusive"
    checks.clear()
    slow = timing.paired_blocks(run_block, {"baseline": 1, "metrics": 1}, {"baseline": 1, "metrics": 1}, settings,
                                decided=decided_after(30))
    assert slow.stopped_by == "conclusive" and len(slow.orders) == checks[-1] >= 30
    assert checks[:4] == [10, 15, 22, 33]  # the interval is tested at x1.5 steps, not after every pair


def test_block_size_targets_block_s_within_the_sample_cap():
    settings = MeasureSettings(min_pairs=10, max_samples=1000, block_s=0.2).resolved(False)
    assert timing.block_size(0.05, settings) == 4
    assert timing.block_size(1.0, settings) == 1  # a step longer than a block: one sample per block
    assert timing.block_size(1e-5, settings) == 50  # capped: min_pairs pairs fit in max_samples


def test_cpu_peak_of_a_200_mib_step():
    def step():
        buf = torch.ones(200 * 2**20 // 4)
        del buf

    before = memory.current_bytes("cpu")
    peak = memory.peak_of(step, "cpu")
    if peak["peak"] is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    delta_mib = (peak["peak"] - before) / 2**20
    assert 180 <= delta_mib <= 260
    assert peak["source"] == "cpu_vmhwm"


def test_cpu_peak_ignores_a_one_time_growth():
    calls = []

    def step():  # every call needs 32 MiB; the first also needs a 96 MiB scratch once (a one-time set-up)
        buf = torch.ones(32 * 2**20 // 4)
        if not calls:
            scratch = torch.ones(96 * 2**20 // 4)
            del scratch
        calls.append(1)
        del buf

    before = memory.current_bytes("cpu")
    peak = memory.peak_of(step, "cpu")
    if peak["peak"] is None:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert len(calls) == 2 and 24 <= (peak["peak"] - before) / 2**20 <= 60  # the step's 32 MiB, not 128


def test_device_events_flush_the_l2_before_every_call(monkeypatch):
    """One flush and one event pair per call (triton's do_bench), not one per block: every call starts cold."""
    import torch

    log = []

    class Event:
        def __init__(self, enable_timing):
            self.t = None

        def record(self):
            self.t = len(log)
            log.append("record")

        def synchronize(self):
            log.append("sync")

        def elapsed_time(self, end):  # milliseconds, as CUDA events report
            return float(end.t - self.t)

    class Buffer:
        def zero_(self):
            log.append("flush")

    monkeypatch.setattr(torch.cuda, "Event", Event)
    clock = Clock.__new__(Clock)
    clock.torch, clock.flush_buffer, clock.timer, clock.reduce = torch, Buffer(), "device_events", lambda t: t
    seconds = clock.time(lambda: log.append("call"), iterations=3)
    assert log == ["flush", "record", "call", "record"] * 3 + ["sync"]
    assert seconds == 2 / 1e3  # each call's pair is 2 log entries apart: 2 "ms" per call
