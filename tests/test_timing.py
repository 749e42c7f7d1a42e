"""Timing rules T1, T5, T7 and memory rule M3, on the CPU."""

import inspect
import time

import pytest
import torch

from harness import memory, timing
from harness.timing import Clock, MeasureSettings, measure

FAST = MeasureSettings(min_samples=5, min_time_s=0.05, max_time_s=1.0, rounds=2, warmup_min_iters=3,
                       warmup_min_s=0.01, warmup_max_s=0.5)


def test_sleep_reads_its_duration():
    result = measure(lambda: time.sleep(0.05), "cpu", MeasureSettings(min_samples=5, min_time_s=0.1, rounds=1,
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
    x = torch.ones(4)
    result = measure(lambda: x.add_(1), "cpu", FAST)  # ~2 us per call
    assert result["iterations"] > 1
    assert result["median"] < 1e-4


def test_timer_never_uses_wall_clock_time():
    source = inspect.getsource(timing)
    assert "time.time(" not in source and "perf_counter" in source


def test_device_events_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        Clock("cpu", timer="device_events")


def test_samples_respect_count_and_time_bounds():
    settings = MeasureSettings(min_samples=7, min_time_s=0.05, max_time_s=0.3, rounds=1, warmup_min_s=0.01)
    samples = timing.sample(lambda: time.sleep(0.001), Clock("cpu"), settings.resolved(False))
    assert len(samples) >= 7 and sum(samples) >= 0.05
    slow = timing.sample(lambda: time.sleep(0.1), Clock("cpu"), MeasureSettings(min_samples=50, max_time_s=0.3))
    assert 2 <= len(slow) <= 4  # capped by max_time_s


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
