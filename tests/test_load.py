"""Foreign load (harness.core.load): CPU time outside the case's process tree is seen, the case's own is not."""

import subprocess
import sys
import time

import pytest

from harness.core import load

SPIN = "import time\nend = time.perf_counter() + {s}\nwhile time.perf_counter() < end: pass\n"


def _spin_here(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _idle_foreign(meter) -> float:
    """Foreign load of this machine while this process sleeps: what other work is going on anyway."""
    a = meter.snapshot()
    time.sleep(0.5)
    return meter.window(a, meter.snapshot())["foreign_cpu"]


def test_an_orphaned_busy_process_is_foreign_and_our_own_work_is_not(tmp_path):
    meter = load.LoadMeter()
    idle = _idle_foreign(meter)
    a = meter.snapshot()
    _spin_here(0.6)  # this process: the case's own CPU time
    b = meter.snapshot()
    # a busy loop whose parent exits at once: reparented to init, outside this process tree (bounded: 1.2 s);
    # read once it spins (it touches `ready`), not after a fixed wait a slow interpreter start can outlast
    ready = tmp_path / "ready"
    code = f"open({str(ready)!r}, 'w').close()\n" + SPIN.format(s=1.2)
    subprocess.run(["sh", "-c", f'"{sys.executable}" -c "{code}" >/dev/null 2>&1 &'], check=True)
    deadline = time.perf_counter() + 30
    while not ready.exists() and time.perf_counter() < deadline:
        time.sleep(0.01)
    c = meter.snapshot()
    time.sleep(0.8)
    d = meter.snapshot()
    own, foreign = meter.window(a, b), meter.window(c, d)
    assert own["foreign_cpu"] < idle + 0.15
    assert foreign["foreign_cpu"] > idle + 0.5 / meter.cores  # about one more busy core out of `cores`


def test_children_of_the_case_count_as_its_own():
    idle = _idle_foreign(load.LoadMeter())
    child = subprocess.Popen([sys.executable, "-c", SPIN.format(s=1.0)])
    meter = load.LoadMeter()  # the tree is read when the meter is made: the child is in it
    a = meter.snapshot()
    time.sleep(0.8)
    b = meter.snapshot()
    child.wait()
    assert meter.window(a, b)["foreign_cpu"] < idle + 0.15


def test_processes_the_case_starts_after_the_meter_count_as_its_own():
    """A helper process started after timing began (a DataLoader worker, a lazily started pool) and one that has
    already ended and been reaped are the case's own CPU time, not foreign."""
    meter = load.LoadMeter()
    idle = _idle_foreign(meter)
    a = meter.snapshot()
    running = subprocess.Popen([sys.executable, "-c", SPIN.format(s=1.0)])
    time.sleep(0.6)
    b = meter.snapshot()  # the helper is alive: read from the tree as it is now
    running.wait()
    subprocess.run([sys.executable, "-c", SPIN.format(s=0.6)], check=True)  # started and reaped between snapshots
    c = meter.snapshot()
    assert meter.window(a, b)["foreign_cpu"] < idle + 0.15
    assert meter.window(b, c)["foreign_cpu"] < idle + 0.15


def test_short_pairs_are_read_over_windows_long_enough_for_the_ticks():
    """Pairs of microsecond blocks: one snapshot per MIN_WINDOW_S, not per pair, so no reading is a lone tick,
    and every pair still has its window's figure."""
    meter = load.LoadMeter()
    meter.start()
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        _spin_here(0.0005)  # a pair of short blocks
        meter.pair_done()
    windows, weights, pairs = meter.pair_windows()
    assert sum(pairs) == meter.pairs > 100
    assert len(windows) <= 1.0 / load.MIN_WINDOW_S + 1
    assert all(w >= load.MIN_WINDOW_S for w in weights[:-1])
    record = load.summarize(windows, weights, meter.cores, 1, None, pairs=pairs)
    assert len(record["per_pair"]) == meter.pairs and record["windows"] == len(windows)


def test_the_case_figure_sums_the_windows_so_tick_rounding_does_not_bias_it():
    """Readings of +-1 tick around a true zero: clamping each window at 0 and averaging would read a load that is
    not there; the sums of CPU seconds cancel."""
    tick = 0.01
    windows = [{"foreign_cpu": max(0.0, x / 0.4), "steal": 0.0, "foreign_s": x, "steal_s": 0.0, "capacity_s": 0.4}
               for x in [tick, -tick] * 20]
    record = load.summarize(windows, [0.2] * 40, cores=2, threads=2, gpu_others=None)
    assert record["foreign_cpu"] == 0.0 and not record["busy"]


def test_summary_withholds_the_verdict_and_says_which_threads_to_use():
    windows = [{"foreign_cpu": 0.5, "steal": 0.0}, {"foreign_cpu": 0.4, "steal": 0.0}]
    busy = load.summarize(windows, [1.0, 1.0], cores=2, threads=2, gpu_others=None)
    assert busy["busy"] and busy["foreign_cpu"] == 0.45 and "foreign CPU 45% of 2 cores" in busy["reason"]
    assert "threads: 1" in busy["advice"] and "OpenMP" in busy["advice"]
    quiet = load.summarize([{"foreign_cpu": 0.02, "steal": 0.0}], [1.0], cores=2, threads=2, gpu_others=None)
    assert not quiet["busy"] and quiet["reason"] is None and quiet["advice"] is None
    gpu = load.summarize([{"foreign_cpu": 0.0, "steal": 0.0}], [1.0], cores=2, threads=2, gpu_others=1)
    assert gpu["busy"] and "other process(es) computing on the GPU" in gpu["reason"]
    stolen = load.summarize([{"foreign_cpu": 0.02, "steal": 0.15}], [1.0], cores=4, threads=2, gpu_others=None)
    assert stolen["busy"] and "steal 15%" in stolen["reason"]


def test_throttling_from_nvml_violation_counters_across_pairs():
    """Counter differences across each pair, capped at the pair's wall time; no counters, no record."""
    from harness.core.energy import throttle_record

    counters = [{"power": 10.0, "thermal": 5.0}, {"power": 10.0, "thermal": 5.0}, {"power": 10.3, "thermal": 5.1},
                {"power": 11.5, "thermal": 5.6}]
    record = throttle_record(counters, [1.0, 1.0, 1.0])
    assert record["power_s"] == pytest.approx(1.5) and record["thermal_s"] == pytest.approx(0.6)
    assert record["per_pair"] == pytest.approx([0.0, 0.4, 1.0])  # the last pair: 1.7 s counted within 1 s
    assert record["fraction"] == pytest.approx(1.4 / 3)
    assert throttle_record([None, None], [1.0]) is None and throttle_record([counters[0]], []) is None
