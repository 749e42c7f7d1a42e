"""Statistics and comparison rules S1-S3."""

import random

from pytest_benchmark.stats import Stats

from harness import stats


def test_summary_matches_pytest_benchmark_stats():
    samples = [0.011, 0.012, 0.010, 0.013, 0.0105, 0.0125, 0.05, 0.0111]
    ref = Stats()
    for s in samples:
        ref.update(s)
    out = stats.summarize(samples)
    for key in ("median", "mean", "stddev", "min", "max", "q1", "q3", "iqr", "rounds", "outliers"):
        assert out[key] == getattr(ref, key), key
    assert "p99" not in out  # fewer than 100 samples
    assert out["data"] == samples
    assert stats.summarize(samples * 13)["p99"] == stats.percentile(samples * 13, 0.99)


def test_first_sample_outlier_says_warmup_too_short():
    warnings = stats.warnings_for("baseline", [10, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    assert any("warm-up was too short" in w for w in warnings)
    assert not any("warm-up" in w for w in stats.warnings_for("baseline", [1, 1.01, 0.99, 1, 1.02, 1, 0.98]))


def test_noise_warnings_follow_iqr_thresholds():
    quiet = [1.0, 1.01, 0.99, 1.0, 1.02]
    noisy = [1.0, 1.15, 0.9, 1.05, 0.95, 1.1, 1.0]
    wild = [1.0, 2.0, 0.5, 1.5, 0.7, 1.8]
    assert stats.warnings_for("x", quiet) == []
    assert any("noisy" in w for w in stats.warnings_for("x", noisy))
    assert any("significant environmental influence" in w for w in stats.warnings_for("x", wild))


def _draws(rng, mean, n):
    return [rng.gauss(mean, mean * 0.05) for _ in range(n)]


def test_same_distribution_is_no_significant_difference():
    rng = random.Random(1)
    base = [_draws(rng, 1.0, 10), _draws(rng, 1.0, 10)]
    opt = [_draws(rng, 1.0, 10), _draws(rng, 1.0, 10)]
    assert stats.compare(base, opt)["verdict"] == "no significant difference"


def test_twenty_percent_shift_is_faster_and_slower_the_other_way():
    rng = random.Random(2)
    base = [_draws(rng, 1.0, 20)]
    opt = [_draws(rng, 0.8, 20)]
    result = stats.compare(base, opt)
    assert result["verdict"] == "faster"
    assert result["ci95"][0] > 1.0 and 1.15 < result["speedup"] < 1.4
    assert stats.compare(opt, base)["verdict"] == "slower"


def test_small_but_certain_effect_below_min_effect_is_not_called():
    base = [[1.0, 1.001, 0.999] * 5]
    opt = [[0.98, 0.981, 0.979] * 5]  # 2% faster, very certain
    assert stats.compare(base, opt, min_effect=0.05)["verdict"] == "no significant difference"
    assert stats.compare(base, opt, min_effect=0.01)["verdict"] == "faster"


def test_bootstrap_is_reproducible_with_fixed_seed():
    rng = random.Random(3)
    base, opt = [_draws(rng, 1.0, 15)], [_draws(rng, 0.9, 15)]
    assert stats.compare(base, opt)["ci95"] == stats.compare(base, opt)["ci95"]


def test_interleaving_cancels_a_slow_drift():
    """T9: a clock that slows down over time biases a sequential comparison but not an interleaved one."""
    drift = lambda t: 1.0 + 0.02 * t  # noqa: E731 - 2% slower per time unit
    true_speedup = 1.25
    sequential_b = [[drift(t) for t in range(10)]]
    sequential_o = [[drift(t) / true_speedup for t in range(10, 20)]]
    interleaved_b, interleaved_o, t = [], [], 0
    for _ in range(5):
        interleaved_b.append([drift(t), drift(t + 1)])
        interleaved_o.append([drift(t + 2) / true_speedup, drift(t + 3) / true_speedup])
        t += 4
    seq = stats.compare(sequential_b, sequential_o)["speedup"]
    inter = stats.compare(interleaved_b, interleaved_o)["speedup"]
    assert abs(inter / true_speedup - 1) < 0.05
    assert abs(seq / true_speedup - 1) > 0.05
