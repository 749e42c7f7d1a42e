"""Statistics of samples and of a comparison (rules S1-S4 of METHODOLOGY.md). Pure Python, no torch."""

from __future__ import annotations

import random
import statistics
from typing import Any

from pytest_benchmark.stats import Stats

NOISY_IQR = 0.10  # IQR/median thresholds of torch.utils.benchmark
VERY_NOISY_IQR = 0.25
OUTLIER_Z = 14.826  # |x - median| / MAD above this is an outlier (hyperfine's modified z-score)
BOOTSTRAP_RESAMPLES = 2000
MIN_EFFECT = 0.05
CPU_MEMORY_RESOLUTION = 8 * 2**20  # bytes: CPU RSS peaks move by ~1-2 MiB from runtime allocations alone


def summarize(samples: list[float], iterations: int = 1) -> dict[str, Any]:
    """Latency statistics of per-call times (seconds): pytest-benchmark's Stats plus p90, p99, cv."""
    stats = Stats()
    for s in samples:
        stats.update(s)
    out = {k: getattr(stats, k) for k in ("median", "mean", "stddev", "min", "max", "q1", "q3", "iqr",
                                          "rounds", "outliers", "iqr_outliers", "stddev_outliers")}
    out["p90"] = percentile(samples, 0.90)
    if len(samples) >= 100:  # p99 of fewer samples is just the max
        out["p99"] = percentile(samples, 0.99)
    out["cv"] = out["stddev"] / out["mean"] if out["mean"] else 0.0
    out["iterations"] = iterations
    out["data"] = list(samples)
    return out


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method)."""
    xs = sorted(samples)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def warnings_for(name: str, samples: list[float]) -> list[str]:
    """Noise and warm-up warnings for one side's samples (S1, S2)."""
    warnings = []
    median = statistics.median(samples)
    iqr = percentile(samples, 0.75) - percentile(samples, 0.25)
    ratio = iqr / median if median else 0.0
    if ratio >= VERY_NOISY_IQR:
        warnings.append(f"{name}: significant environmental influence: IQR/median = {ratio:.2f} >= {VERY_NOISY_IQR}")
    elif ratio >= NOISY_IQR:
        warnings.append(f"{name}: noisy: IQR/median = {ratio:.2f} >= {NOISY_IQR}")
    if outlier_flags(samples)[:1] == [True]:
        warnings.append(f"{name}: the first sample is an outlier: warm-up was too short")
    return warnings


def outlier_flags(samples: list[float]) -> list[bool]:
    """Which samples are outliers by the modified z-score |x - median| / MAD > 14.826."""
    median = statistics.median(samples)
    mad = statistics.median(abs(x - median) for x in samples)
    if mad == 0:
        return [x != median for x in samples]
    return [abs(x - median) / mad > OUTLIER_Z for x in samples]


def compare(baseline_rounds: list[list[float]], optimized_rounds: list[list[float]],
            min_effect: float = MIN_EFFECT, seed: int = 0) -> dict[str, Any]:
    """Speedup = median(baseline) / median(optimized), with a 95% percentile-bootstrap interval and a verdict.

    Samples are resampled within each side and within each round (stratified by round, so the interval keeps
    the interleaved design); the verdict is "faster"/"slower" only when the interval excludes 1 and the ratio
    differs from 1 by at least `min_effect` (S3).
    """
    base = [x for r in baseline_rounds for x in r]
    opt = [x for r in optimized_rounds for x in r]
    speedup = statistics.median(base) / statistics.median(opt)
    rng = random.Random(seed)
    ratios = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        b = [x for r in baseline_rounds for x in rng.choices(r, k=len(r))]
        o = [x for r in optimized_rounds for x in rng.choices(r, k=len(r))]
        ratios.append(statistics.median(b) / statistics.median(o))
    lo, hi = percentile(ratios, 0.025), percentile(ratios, 0.975)
    return {
        "speedup": speedup,
        "ci95": [lo, hi],
        "verdict": verdict(speedup, lo, hi, min_effect),
        "per_round": [statistics.median(b) / statistics.median(o)
                      for b, o in zip(baseline_rounds, optimized_rounds) if b and o],
        "min_effect": min_effect,
    }


def verdict(speedup: float, lo: float, hi: float, min_effect: float = MIN_EFFECT) -> str:
    """"faster", "slower" or "no significant difference" (S3)."""
    if lo > 1.0 and speedup >= 1.0 + min_effect:
        return "faster"
    if hi < 1.0 and speedup <= 1.0 / (1.0 + min_effect):
        return "slower"
    return "no significant difference"
