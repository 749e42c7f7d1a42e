"""The harness's own overhead and accuracy, as pytest-benchmark benchmarks (CI runs them once with
--benchmark-disable, as tests). Figures live in the benchmark output, not in assertions on time."""

import time

from harness.core.timing import Clock, MeasureSettings, measure


def test_clock_overhead_per_sample(benchmark):
    """What one synchronized sample of a no-op costs (the floor under every reported time)."""
    calls = []
    clock = Clock("cpu")
    per_call = benchmark(clock.time, lambda: calls.append(1), 10)
    assert per_call > 0 and len(calls) % 10 == 0  # a sample is a block of 10 calls, time divided by 10


def test_measure_reads_a_known_duration(benchmark):
    """measure() of a 5 ms sleep: its median must be the sleep, whatever the harness adds around it."""
    settings = MeasureSettings(min_samples=5, min_time_s=0.03, max_time_s=0.5, warmup_min_s=0.01,
                               warmup_max_s=0.1)
    stats = benchmark.pedantic(measure, args=(lambda: time.sleep(0.005), "cpu", settings), rounds=1, iterations=1)
    assert 0.005 <= stats["median"] < 0.0065
    benchmark.extra_info["median_of_5ms_sleep_s"] = stats["median"]
