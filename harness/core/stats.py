"""Statistics of samples and of a paired comparison (docs/measurement.md, "Statistics"). numpy, no torch.

A case is timed as pairs of blocks: in pair i the baseline runs a block of samples and the optimization a block,
in a random order, back to back (`harness.core.timing.paired_blocks`). Everything here follows from that design:

- per-pair ratio r_i = median(baseline block i) / median(optimized block i): a burst of foreign load or a clock
  change that lasts longer than a pair hits both sides of it;
- speedup = exp(median_i log r_i) over the pairs of every process, so every pair has equal weight and the
  estimate lies within the per-pair range;
- a case is measured in several processes (`measure.repeat`, one per round of the suite); the estimate pools
  their pairs;
- 95% interval: percentile bootstrap that resamples whole processes, then whole pairs within each (a two-level
  cluster bootstrap, Kalibera & Jones, "Rigorous benchmarking in reasonable time", ISMM 2013), widened by a
  small-sample t factor (`bootstrap_interval`); `variance_components` says which level varies;
- verdict (`verdict`): "faster"/"slower" only when the interval excludes 1, the estimate differs from 1 by at least
  `min_effect`, and the machine was not busy; "no significant difference" when the interval lies within the
  equivalence band [1/(1 + min_effect), 1 + min_effect]; otherwise "inconclusive", with the reason.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
from pytest_benchmark.stats import Stats

NOISY_IQR = 0.10  # IQR/median thresholds of torch.utils.benchmark
VERY_NOISY_IQR = 0.25
OUTLIER_Z = 14.826  # |x - median| / MAD above this is an outlier (hyperfine's modified z-score)
BOOTSTRAP_RESAMPLES = 2000
MIN_EFFECT = 0.05  # smallest speedup called "faster"/"slower"
MIN_PAIRS = 5  # fewer pairs give no verdict (and harness.core.timing's budget never stops a case before them)
CPU_MEMORY_RESOLUTION = 8 * 2**20  # bytes: CPU RSS peaks move by ~1-2 MiB from runtime allocations alone
VERDICTS = ("faster", "slower", "no significant difference", "inconclusive")

Blocks = Sequence[Sequence[float]]


def summarize(samples: list[float], iterations: int = 1, blocks: list[int] | None = None) -> dict[str, Any]:
    """Latency statistics of per-call times (seconds): pytest-benchmark's Stats plus p90, p99, cv.

    `blocks`: how many consecutive samples each timed block holds (sum = len(samples)), kept so a later
    comparison between runs can resample whole blocks."""
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
    if blocks is not None:
        out["blocks"] = list(blocks)
    return out


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 1] (numpy's default method); the one percentile of harness."""
    return float(np.percentile(np.asarray(samples, dtype=float), 100 * q))


def itl_percentiles(token_times: list[list[float]]) -> dict[str, Any]:
    """Inter-token latency of streamed sequences: the gaps between consecutive token times of each list
    (seconds), as p50 / p90 / max and the number of gaps; p99 only with >= 100 gaps. Empty without gaps."""
    gaps = sorted(b - a for times in token_times for a, b in zip(times, times[1:]))
    if not gaps:
        return {}
    out = {"itl_p50_s": percentile(gaps, 0.50), "itl_p90_s": percentile(gaps, 0.90), "itl_max_s": gaps[-1],
           "itl_gaps": len(gaps)}
    if len(gaps) >= 100:
        out["itl_p99_s"] = percentile(gaps, 0.99)
    return out


def warnings_for(name: str, samples: list[float], blocks: list[int] | None = None) -> list[str]:
    """Noise and warm-up warnings for one side's samples in time order (S1, S2).

    With `blocks` (samples per block) the first sample of every block follows the other side's block, so a slow
    block start is a side-switch cost (caches evicted), which a longer warm-up would not remove: it is named as
    such when block starts are 10% slower than the rest. "Warm-up was too short" is said only when the very first
    block's start is an outlier among the block starts. Without blocks, the first sample against the rest."""
    warnings = []
    median = statistics.median(samples)
    iqr = percentile(samples, 0.75) - percentile(samples, 0.25)
    ratio = iqr / median if median else 0.0
    if ratio >= VERY_NOISY_IQR:
        warnings.append(f"{name}: significant environmental influence: IQR/median = {ratio:.2f} >= {VERY_NOISY_IQR}")
    elif ratio >= NOISY_IQR:
        warnings.append(f"{name}: noisy: IQR/median = {ratio:.2f} >= {NOISY_IQR}")
    cut = split_blocks({"data": samples, "blocks": blocks}) if blocks else []
    if len(cut) < 3:
        if outlier_flags(samples)[:1] == [True] and samples[0] > median:
            warnings.append(f"{name}: the first sample is an outlier: warm-up was too short")
        return warnings
    starts = [b[0] for b in cut]
    if outlier_flags(starts)[:1] == [True] and starts[0] > statistics.median(starts):
        warnings.append(f"{name}: the first timed sample is an outlier among the block starts: warm-up was too "
                        "short (raise it in the suite: `measure: {warmup_min_s: 1.0}`)")
    rest = [x for b in cut for x in b[1:]]
    if len(rest) >= 3 and statistics.median(starts) > 1.1 * statistics.median(rest):
        slower = statistics.median(starts) / statistics.median(rest) - 1
        warnings.append(f"{name}: the first sample of each block is {slower:.0%} slower than the rest: a side-switch "
                        "cost (the other side's block evicted caches), not a warm-up problem; both sides pay it, "
                        "and a larger block dilutes it (`measure: {block_s: 0.5}` in the suite)")
    return warnings


def outlier_flags(samples: list[float]) -> list[bool]:
    """Which samples are outliers by the modified z-score |x - median| / MAD > 14.826."""
    median = statistics.median(samples)
    mad = statistics.median(abs(x - median) for x in samples)
    if mad == 0:
        return [x != median for x in samples]
    return [abs(x - median) / mad > OUTLIER_Z for x in samples]


def pair_ratios(baseline_blocks: Blocks, optimized_blocks: Blocks) -> list[float]:
    """r_i = median(baseline block i) / median(optimized block i), for each pair with both blocks timed."""
    return [statistics.median(b) / statistics.median(o) for b, o in zip(baseline_blocks, optimized_blocks)
            if len(b) and len(o)]


def estimate(groups: Sequence[Sequence[float]]) -> float:
    """Speedup from per-pair ratios grouped by process: exp(median of every pair's log-ratio), the processes
    pooled. It lies within the range of the per-pair ratios whatever the block sizes and process counts."""
    return math.exp(float(np.median(np.log(np.concatenate([np.asarray(g, dtype=float) for g in groups])))))


def variance_components(groups: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Where the log-ratios vary (one-way random effects, method of moments, unbalanced): `within_cv`, the
    spread of one pair within a process; `between_cv`, the spread of the process means beyond what that
    explains (0 when the processes agree more than their pairs do); both as standard deviations of the natural
    log, which for small values read as a coefficient of variation. `df`: Satterthwaite's degrees of freedom of
    the variance of the pooled estimate with the pairs' part taken as known (the bootstrap resamples many
    pairs, and a one-process interval gets no correction for them either): K - 1 when the processes dominate,
    more as the pairs' share grows; None when there is no process-level part (then nothing to widen)."""
    logs = [np.log(np.asarray(g, dtype=float)) for g in groups if len(g)]
    k, n = len(logs), np.array([len(g) for g in logs], dtype=float)
    total = n.sum()
    out = {"processes": k, "pairs": int(total), "within_cv": None, "between_cv": None, "df": None}
    if total - k < 1:
        return out
    means = np.array([g.mean() for g in logs])
    msw = sum(float(((g - g.mean()) ** 2).sum()) for g in logs) / (total - k)
    between = 0.0
    if k > 1:
        msb = float((n * (means - np.concatenate(logs).mean()) ** 2).sum()) / (k - 1)
        n0 = (total - (n ** 2).sum() / total) / (k - 1)
        between = max(0.0, (msb - msw) / n0)
    var_between, var_within = between / k, msw / total
    df = (var_between + var_within) ** 2 / (var_between ** 2 / (k - 1)) if var_between > 0 else None
    out.update(within_cv=math.sqrt(msw), between_cv=math.sqrt(between), df=df)
    return out


def t_quantile(df: float, p: float = 0.975) -> float:
    """Student's t quantile: exact for 1 and 2 degrees of freedom, else the Cornish-Fisher expansion of
    Abramowitz & Stegun 26.7.5 (within 0.01 of the table from 3 degrees of freedom on)."""
    one, two = math.tan(math.pi * (p - 0.5)), (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    if df <= 2:  # between 1 and 2: linear in df
        return one + (two - one) * (max(df, 1.0) - 1)
    x = NormalDist().inv_cdf(p)
    g = ((x ** 3 + x) / 4, (5 * x ** 5 + 16 * x ** 3 + 3 * x) / 96,
         (3 * x ** 7 + 19 * x ** 5 + 17 * x ** 3 - 15 * x) / 384,
         (79 * x ** 9 + 776 * x ** 7 + 1482 * x ** 5 - 1920 * x ** 3 - 945 * x) / 92160)
    return x + sum(term / df ** (i + 1) for i, term in enumerate(g))


def _pooled_median_resamples(groups: Sequence[Sequence[float]], rng: np.random.Generator,
                             resamples: int = BOOTSTRAP_RESAMPLES) -> np.ndarray:
    """Medians of the pooled log-ratios in `resamples` two-level resamples: the processes drawn with
    replacement (one process: itself), then each drawn process's pairs with replacement."""
    logs = [np.log(np.asarray(g, dtype=float)) for g in groups]
    sizes = np.array([len(g) for g in logs])
    flat, offsets = np.concatenate(logs), np.concatenate([[0], np.cumsum(sizes)[:-1]])
    k, widest = len(logs), int(sizes.max())
    pick = rng.integers(0, k, size=(resamples, k)) if k > 1 else np.zeros((resamples, 1), dtype=int)
    n = sizes[pick][:, :, None]
    idx = offsets[pick][:, :, None] + np.floor(rng.random((resamples, k, widest)) * n).astype(int)
    values = np.where(np.arange(widest)[None, None, :] < n, flat[np.minimum(idx, len(flat) - 1)], np.nan)
    return np.nanmedian(values.reshape(resamples, -1), axis=1)


def bootstrap_interval(groups: Sequence[Sequence[float]], resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """95% interval of `estimate`: percentile bootstrap of the pooled median, resampling whole processes and
    then whole pairs within each (two-level cluster bootstrap, Kalibera & Jones 2013). With several processes
    it is widened about the estimate by t(df) / z, Satterthwaite's df of `variance_components`: a bootstrap over
    a handful of processes shows too little of their spread (five processes: 80 % of pairings instead of 83 %
    when they dominate, docs/measurement.md); when the processes agree, df is large and the factor is ~1. Fixed
    seed: the same ratios give the same interval."""
    rng = np.random.default_rng(seed)
    lo, hi = np.percentile(_pooled_median_resamples(groups, rng, resamples), [2.5, 97.5])
    df = variance_components(groups)["df"] if len([g for g in groups if len(g)]) > 1 else None
    if df is not None:
        center = math.log(estimate(groups))
        widen = t_quantile(df) / NormalDist().inv_cdf(0.975)
        lo, hi = center - widen * (center - lo), center + widen * (hi - center)
    return math.exp(float(lo)), math.exp(float(hi))


def equivalence_band(min_effect: float = MIN_EFFECT) -> tuple[float, float]:
    """Speedups this close to 1 count as "no difference": [1/(1 + min_effect), 1 + min_effect], the band below
    the smallest effect called faster or slower. An interval inside it cannot hold an estimate that another run
    would call faster or slower, so two runs whose intervals hold each other's estimates never read "faster"
    and "no significant difference" (a band of twice min_effect let 1.06x [1.02, 1.09] and 1.04x [1.00, 1.08]
    do that)."""
    return 1.0 / (1.0 + min_effect), 1.0 + min_effect


def verdict(speedup: float, lo: float, hi: float, min_effect: float = MIN_EFFECT,
            busy: str | None = None) -> tuple[str, str | None]:
    """(verdict, reason): "faster", "slower", "no significant difference" or "inconclusive" with why."""
    if busy:
        return "inconclusive", busy
    if lo > 1.0 and speedup >= 1.0 + min_effect:
        return "faster", None
    if hi < 1.0 and speedup <= 1.0 / (1.0 + min_effect):
        return "slower", None
    band_lo, band_hi = equivalence_band(min_effect)
    if band_lo < lo and hi < band_hi:
        return "no significant difference", None
    return "inconclusive", (f"interval [{lo:.2f}, {hi:.2f}] too wide: it neither excludes 1 by the "
                            f"{min_effect:.0%} minimum effect nor lies within [{band_lo:.2f}, {band_hi:.2f}]")


def compare_groups(groups: Sequence[Sequence[float]], min_effect: float = MIN_EFFECT, busy: str | None = None,
                   seed: int = 0) -> dict[str, Any]:
    """Speedup, interval and verdict from per-pair ratios, one list per process."""
    groups = [list(g) for g in groups if len(g)]
    n = sum(len(g) for g in groups)
    if not n:
        return {"speedup": None, "ci95": None, "verdict": "inconclusive", "reason": "no pairs timed",
                "pairs": 0, "min_effect": min_effect}
    speedup = estimate(groups)
    lo, hi = bootstrap_interval(groups, seed=seed)
    word, reason = verdict(speedup, lo, hi, min_effect, busy)
    if n < MIN_PAIRS and word != "inconclusive":
        word, reason = "inconclusive", f"only {n} pairs of blocks (a verdict needs {MIN_PAIRS})"
    return {"speedup": speedup, "ci95": [lo, hi], "verdict": word, "reason": reason, "pairs": n,
            "processes": len(groups), "variance": variance_components(groups), "min_effect": min_effect,
            "equivalence": list(equivalence_band(min_effect))}


def compare(baseline_blocks: Blocks, optimized_blocks: Blocks, min_effect: float = MIN_EFFECT,
            seed: int = 0, busy: str | None = None) -> dict[str, Any]:
    """Paired comparison of one process's timing: block i of each side form pair i (see the module docstring).

    Returns speedup (> 1 = optimized faster), ci95, verdict, reason (why inconclusive, else None), per_pair
    ratios, pairs, min_effect and the equivalence band."""
    ratios = pair_ratios(baseline_blocks, optimized_blocks)
    out = compare_groups([ratios], min_effect, busy, seed)
    out["per_pair"] = ratios
    return out


def split_blocks(latency: dict[str, Any]) -> list[list[float]]:
    """A side's samples cut into its timed blocks (`latency.blocks`); one block per sample when not recorded
    (older results, pytest-benchmark files)."""
    data = list(latency.get("data") or [])
    sizes = latency.get("blocks") or [1] * len(data)
    out, start = [], 0
    for size in sizes:
        out.append(data[start:start + size])
        start += size
    return [b for b in out if b]


def compare_unpaired(first: Blocks, later: Blocks, min_effect: float = MIN_EFFECT, seed: int = 0,
                     busy: str | None = None) -> dict[str, Any]:
    """Two runs timed apart (other machines, other days): speedup = median of the first run's block medians /
    median of the later run's (> 1 = later faster), interval by resampling each run's blocks independently,
    verdict by the same rule as a paired case (`verdict`)."""
    a = np.log([statistics.median(b) for b in first if len(b)])
    b = np.log([statistics.median(x) for x in later if len(x)])
    if len(a) < 2 or len(b) < 2:
        return {"speedup": None, "ci95": None, "verdict": "inconclusive", "reason": "fewer than 2 blocks",
                "min_effect": min_effect}
    rng = np.random.default_rng(seed)
    ra = np.median(a[rng.integers(0, len(a), size=(BOOTSTRAP_RESAMPLES, len(a)))], axis=1)
    rb = np.median(b[rng.integers(0, len(b), size=(BOOTSTRAP_RESAMPLES, len(b)))], axis=1)
    lo, hi = (math.exp(float(x)) for x in np.percentile(ra - rb, [2.5, 97.5]))
    speedup = math.exp(float(np.median(a) - np.median(b)))
    word, reason = verdict(speedup, lo, hi, min_effect, busy)
    return {"speedup": speedup, "ci95": [lo, hi], "verdict": word, "reason": reason, "min_effect": min_effect}


# Two runs of one process each cannot show process-to-process variation (memory placement, frequency, the
# neighbours of a shared VM), which the block bootstrap does not cover (Kalibera & Jones 2013). Measured: the
# quick suite run twice, hours apart, on the same quiet 2-core EPYC VM (foreign CPU 0-2 %), at two commits whose
# timed steps are the same (one case alternated 73 / 128 ms between the two commits' code run back to back, and
# 75-119 ms in one process with either): later-vs-first time ratios of its 30 case sides 0.72-1.57 (SD of log
# 0.15; 12 of 30 would have been called faster/slower), its 15 optimizations' speedup ratios 0.86-1.16 (SD of
# log 0.08; 4 of 15 called larger/smaller). So across runs of one process each,
# a verdict needs a change beyond these margins; runs made with --repeat N carry that variation in their blocks.
ONE_PROCESS_TIME_MARGIN = 1.6
ONE_PROCESS_EFFECT_MARGIN = 1.2


def process_guard(result: dict[str, Any], value_key: str, margin: float, words: tuple[str, str]) -> dict[str, Any]:
    """`result` (of compare_unpaired or compare_effects, runs of one process each) with a verdict in `words`
    turned into "inconclusive" when its estimate lies within [1/margin, margin]: that much can be
    process-to-process variation (ONE_PROCESS_TIME_MARGIN)."""
    value = result.get(value_key)
    if result.get("verdict") in words and value and 1 / margin < value < margin:
        result.update(verdict="inconclusive", reason=(
            f"one process per run: a change under {margin:g}x can be process-to-process variation, which "
            "these intervals do not cover; measure both runs in several processes (the default --repeat)"))
    return result


def _median_log_resamples(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """BOOTSTRAP_RESAMPLES medians of `values` (logs) resampled with replacement."""
    return np.median(values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))], axis=1)


def geomean_speedup(rows: Sequence[tuple[Blocks, Blocks]], seed: int = 0) -> dict[str, Any]:
    """The geometric mean over cases of later-vs-first speedups (first median / later median, > 1 = later
    faster), as TorchBench summarizes a machine or a commit, with a 95% interval.

    rows: (first run's blocks, later run's blocks) per case side. Each case's log speedup is the difference of
    the median log block medians (`compare_unpaired`). The interval is a two-level bootstrap: each resample
    draws the cases with replacement, then each drawn case's blocks, and takes the mean log speedup; so it covers
    how the cases differ from each other, and with it each case's process-to-process variation, which a run of
    one process cannot show in its blocks. Cases with fewer than 2 blocks in a run are left out."""
    rng = np.random.default_rng(seed)
    points, draws = [], []
    for first, later in rows:
        a = np.log([statistics.median(b) for b in first if len(b)])
        b = np.log([statistics.median(x) for x in later if len(x)])
        if len(a) < 2 or len(b) < 2:
            continue
        points.append(float(np.median(a) - np.median(b)))
        draws.append(_median_log_resamples(a, rng) - _median_log_resamples(b, rng))
    if not points:
        return {"speedup": None, "ci95": None, "cases": 0}
    draws_by_case = np.stack(draws)  # [cases, resamples]
    pick = rng.integers(0, len(points), size=(BOOTSTRAP_RESAMPLES, len(points)))
    means = draws_by_case[pick, np.arange(BOOTSTRAP_RESAMPLES)[:, None]].mean(axis=1)
    lo, hi = (math.exp(float(x)) for x in np.percentile(means, [2.5, 97.5]))
    return {"speedup": math.exp(float(np.mean(points))), "ci95": [lo, hi], "cases": len(points)}


def compare_effects(first: Sequence[float], later: Sequence[float], min_effect: float = MIN_EFFECT, seed: int = 0,
                    busy: str | None = None) -> dict[str, Any]:
    """Whether an optimization's effect differs between two runs (two machines): from each run's per-pair
    ratios (baseline / optimized), the ratio of the speedups later / first (> 1: it buys more in the later run)
    with a 95% interval (each run's pairs resampled independently) and the verdict of `verdict` renamed:
    "larger" / "smaller" / "no significant difference" / "inconclusive"."""
    a, b = np.log(np.asarray(first, dtype=float)), np.log(np.asarray(later, dtype=float))
    if len(a) < MIN_PAIRS or len(b) < MIN_PAIRS:
        return {"ratio": None, "ci95": None, "verdict": "inconclusive",
                "reason": f"fewer than {MIN_PAIRS} pairs in a run", "min_effect": min_effect}
    rng = np.random.default_rng(seed)
    diff = _median_log_resamples(b, rng) - _median_log_resamples(a, rng)
    lo, hi = (math.exp(float(x)) for x in np.percentile(diff, [2.5, 97.5]))
    ratio = math.exp(float(np.median(b) - np.median(a)))
    word, reason = verdict(ratio, lo, hi, min_effect, busy)
    word = {"faster": "larger", "slower": "smaller"}.get(word, word)
    return {"ratio": ratio, "ci95": [lo, hi], "verdict": word, "reason": reason, "min_effect": min_effect}


def _nonempty(groups: Sequence[Sequence[float]]) -> list[list[float]]:
    """The groups that hold values, as lists."""
    return [list(g) for g in groups if len(g)]


def _run_variance(groups: Sequence[Sequence[float]]) -> tuple[float | None, float | None]:
    """(variance of a run's pooled log estimate, its Satterthwaite df: infinite without a process-level part) from
    `variance_components`: between_cv² / K + within_cv² / N; (None, None) when too few values to tell."""
    v = variance_components(groups)
    if v["within_cv"] is None:
        return None, None
    variance = v["between_cv"] ** 2 / v["processes"] + v["within_cv"] ** 2 / v["pairs"]
    return variance, v["df"] if v["df"] is not None else math.inf


def runs_df(first: Sequence[Sequence[float]], later: Sequence[Sequence[float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of the difference of two runs' pooled log estimates:
    (var1 + var2)² / (var1² / df1 + var2² / df2) with each run's `_run_variance`; 1 when a run's is unknown (as
    `bootstrap_interval`), infinite when neither varies."""
    parts = [_run_variance(first), _run_variance(later)]
    if any(var is None for var, _ in parts):
        return 1.0
    denominator = sum(var ** 2 / df for var, df in parts if var > 0)
    return sum(var for var, _ in parts) ** 2 / denominator if denominator else math.inf


def _runs_interval(first: Sequence[Sequence[float]], later: Sequence[Sequence[float]],
                   seed: int = 0) -> tuple[float, float, float, float]:
    """(log(pooled median of `first` / pooled median of `later`), its 95% interval in logs, df): the difference
    of two independent two-level bootstraps (`_pooled_median_resamples`: processes, then values within each),
    percentile 2.5 / 97.5, widened about the estimate by t(df) / z with `runs_df` when either run has several
    processes, as `bootstrap_interval` widens a case's."""
    rng = np.random.default_rng(seed)
    center = float(np.median(np.log(np.concatenate(first))) - np.median(np.log(np.concatenate(later))))
    diff = _pooled_median_resamples(first, rng) - _pooled_median_resamples(later, rng)
    lo, hi = (float(x) for x in np.percentile(diff, [2.5, 97.5]))
    df = runs_df(first, later)
    if max(len(first), len(later)) > 1:
        widen = t_quantile(df) / NormalDist().inv_cdf(0.975)
        lo, hi = center - widen * (center - lo), center + widen * (hi - center)
    return center, lo, hi, df


def compare_runs(first_groups: Sequence[Sequence[float]], later_groups: Sequence[Sequence[float]],
                 min_effect: float = MIN_EFFECT, seed: int = 0, busy: str | None = None) -> dict[str, Any]:
    """Two runs of one case side timed apart, each measured in several processes: the same two-level comparison
    as a case instead of fixed margins. Arguments: per run, one list of block medians (seconds) per process.

    speedup = exp(median log first - median log later), every run's processes pooled (> 1 = later faster); its
    interval `_runs_interval`; verdict by `verdict`. Returns compare_unpaired's keys plus `processes` [K1, K2]
    and `df`."""
    first, later = _nonempty(first_groups), _nonempty(later_groups)
    out = {"min_effect": min_effect, "processes": [len(first), len(later)]}
    if sum(map(len, first)) < 2 or sum(map(len, later)) < 2:
        return {"speedup": None, "ci95": None, "verdict": "inconclusive", "reason": "fewer than 2 blocks",
                "df": None, **out}
    center, lo, hi, df = _runs_interval(first, later, seed)
    speedup, lo, hi = math.exp(center), math.exp(lo), math.exp(hi)
    word, reason = verdict(speedup, lo, hi, min_effect, busy)
    return {"speedup": speedup, "ci95": [lo, hi], "verdict": word, "reason": reason, "df": df, **out}


def compare_effects_runs(first_groups: Sequence[Sequence[float]], later_groups: Sequence[Sequence[float]],
                         min_effect: float = MIN_EFFECT, seed: int = 0, busy: str | None = None) -> dict[str, Any]:
    """Whether an optimization's effect differs between two runs measured in several processes: from each run's
    per-pair ratios (baseline / optimized), one list per process, the ratio of the pooled speedups later / first
    (> 1: it buys more in the later run) with the interval of `_runs_interval` and the verdict of `verdict`
    renamed as `compare_effects` does: "larger" / "smaller" / "no significant difference" / "inconclusive"."""
    first, later = _nonempty(first_groups), _nonempty(later_groups)
    out = {"min_effect": min_effect, "processes": [len(first), len(later)]}
    if sum(map(len, first)) < MIN_PAIRS or sum(map(len, later)) < MIN_PAIRS:
        return {"ratio": None, "ci95": None, "verdict": "inconclusive",
                "reason": f"fewer than {MIN_PAIRS} pairs in a run", "df": None, **out}
    center, lo, hi, df = _runs_interval(later, first, seed)
    ratio, lo, hi = math.exp(center), math.exp(lo), math.exp(hi)
    word, reason = verdict(ratio, lo, hi, min_effect, busy)
    word = {"faster": "larger", "slower": "smaller"}.get(word, word)
    return {"ratio": ratio, "ci95": [lo, hi], "verdict": word, "reason": reason, "df": df, **out}
