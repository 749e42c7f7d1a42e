"""Two-level factorial designs of k optimizations and what their block times say (docs/recipes.md). numpy, no torch.

- `design`: the full 2^k factorial for k <= 5, a standard fractional factorial of resolution V or more for
  6 <= k <= 10 (Montgomery, "Design and Analysis of Experiments", table of 2^(k-p) designs); the defining relation
  and the aliases are computed from the runs themselves, never copied from the table. `drop` removes the
  configurations that may not run and names the model terms that are then no longer estimable.
- `estimate`: main effects and two-factor interactions on log block time, least squares with a term per (process,
  round), so whatever a round shared (a burst of foreign load, a drift between rounds) falls out of the effects;
  95% intervals by the two-level bootstrap of harness.core.stats (processes, then rounds within each), widened by
  t(df) / z with several processes as `stats.bootstrap_interval` is; verdicts by `stats.verdict`.
- `config_speedups`, `pareto_front`, `best_within`: each configuration against the baseline, the front of
  objective against peak memory, and the best configuration within a memory budget against the runner-up.

Coding: a factor's level is 0 (off) or 1 (on); the model uses x = 2 * level - 1. A configuration is a tuple of
levels, one per factor in the design's order; the baseline is all zeros and always the design's first run.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from harness.core import stats

MAX_FULL = 5  # up to 2^5 = 32 configurations every combination is run
MAX_FACTORS = 10
LETTERS = "ABCDEFGHJK"  # Montgomery's factor letters (no I: it names the identity)
# The generated factors of each fraction, as products of earlier factors (Montgomery's table). k = 10 uses
# J = BCDE: J = ACDE with K = ACDF would make J*K = EFJK a word of four letters (resolution IV).
GENERATORS = {6: ("ABCDE",), 7: ("ABCDEF",), 8: ("ABCD", "ABEF"), 9: ("ACDFG", "BCEFG"),
              10: ("ABCG", "BCDE", "ACDF")}
INTERACTION_WORDS = {"faster": "super-additive", "slower": "sub-additive",
                     "no significant difference": "no significant interaction"}
MODEL = "log time = (process, round) term + main effects + two-factor interactions, x = +-1"

Config = tuple[int, ...]
Blocks = Sequence[Sequence[Mapping[Config, float | None]]]  # [process][round][config] -> block median (s)
RatioGroups = Callable[[Any, Any], list[list[float]]]  # (a, b) -> per-process per-round t_b / t_a


@dataclass
class Design:
    """The configurations to run and what they can tell apart.

    names: the factors; runs: the configurations (tuples of 0/1, the baseline first); generators: how each
    generated factor's x follows from the others ("f = a:b:c:d:e"; empty for a full factorial); relation: the
    defining relation's words, signed ("-a:b:c:d:g": x_a x_b x_c x_d x_g = -1 on every run); aliases: each main
    effect and two-factor interaction -> the higher-order terms it cannot be told from (empty lists for a full
    factorial); skipped: configurations removed by `drop` -> why; not_estimable: model terms the remaining runs
    cannot estimate."""

    names: list[str]
    runs: list[Config]
    generators: list[str] = field(default_factory=list)
    relation: list[str] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[Config, str] = field(default_factory=dict)
    not_estimable: list[str] = field(default_factory=list)

    @property
    def resolution(self) -> int | None:
        """The length of the defining relation's shortest word; None for a full factorial."""
        return min((len(w.lstrip("-").split(":")) for w in self.relation), default=None)

    def terms(self) -> list[str]:
        """The model's terms: the main effects in factor order, then the two-factor interactions."""
        return [_term_name(self.names, t) for t in _terms(len(self.names))]

    def alias_lines(self) -> list[str]:
        """The aliases as readable lines, "a:b = c:d:e = ...", for the terms that have any."""
        return [f"{term} = {' = '.join(others)}" for term, others in self.aliases.items() if others]

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON: tuples as lists, skipped as [{config, reason}]."""
        return {"names": list(self.names), "runs": [list(r) for r in self.runs], "generators": list(self.generators),
                "relation": list(self.relation), "resolution": self.resolution,
                "aliases": {t: list(a) for t, a in self.aliases.items()}, "alias_lines": self.alias_lines(),
                "skipped": [{"config": list(c), "reason": r} for c, r in self.skipped.items()],
                "not_estimable": list(self.not_estimable)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Design:
        """The inverse of `as_dict`."""
        return cls(names=list(raw["names"]), runs=[tuple(r) for r in raw["runs"]],
                   generators=list(raw.get("generators", [])), relation=list(raw.get("relation", [])),
                   aliases={t: list(a) for t, a in raw.get("aliases", {}).items()},
                   skipped={tuple(s["config"]): s["reason"] for s in raw.get("skipped", [])},
                   not_estimable=list(raw.get("not_estimable", [])))


# ---- designs ----


def design(names: Sequence[str]) -> Design:
    """The design for factors `names`: full 2^k for k <= 5, Montgomery's resolution >= V fraction for 6 <= k <= 10
    (each generated factor's level = the parity of its generator's levels, so the baseline is a run). Raises
    ValueError for k = 0, k > 10, a name given twice, or a name that is empty or holds ':'."""
    names = list(names)
    k = len(names)
    if k == 0:
        raise ValueError("a design needs at least one factor (k = 0)")
    if k > MAX_FACTORS:
        raise ValueError(f"{k} factors: a design holds at most {MAX_FACTORS} (2^(10-3) = 128 configurations)")
    bad = [repr(n) for n in names if not isinstance(n, str) or not n or ":" in n]
    if bad:
        raise ValueError(f"factor names must be non-empty strings without ':' (got {', '.join(bad)})")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"factor names must differ: {', '.join(twice)} given twice")
    generated = [[LETTERS.index(c) for c in g] for g in GENERATORS.get(k, ())]
    base = k - len(generated)
    runs = [b + tuple(sum(b[i] for i in g) % 2 for g in generated) for b in itertools.product((0, 1), repeat=base)]
    relation = _relation(runs, k)
    generators = [f"{names[base + j]} = {'-' if len(g) % 2 == 0 else ''}{':'.join(names[i] for i in g)}"
                  for j, g in enumerate(generated)]
    aliases = {_term_name(names, t): _aliases_of(names, _mask(t), relation) for t in _terms(k)}
    return Design(names, runs, generators, [_word(names, m, s) for s, m in relation], aliases)


def drop(design: Design, forbidden: Mapping[Config, str]) -> Design:
    """`design` without the configurations `forbidden` (config -> why), which are listed in `skipped`; the
    model terms the remaining runs cannot estimate (a rank check: main effects first, then interactions, each
    kept if it adds to the rank) in `not_estimable`. Raises ValueError for a configuration not in the design
    or the baseline."""
    for config in forbidden:
        if tuple(config) not in design.runs:
            raise ValueError(f"configuration {tuple(config)} is not a run of the design")
        if not any(config):
            raise ValueError("the baseline (every factor off) cannot be skipped: every effect is measured from it")
    removed = {tuple(c) for c in forbidden}
    kept = [r for r in design.runs if r not in removed]
    x = np.column_stack([np.ones(len(kept)), _model_matrix(kept, len(design.names))])
    estimable = _estimable(x.T @ x, forced=1)[1:]
    missing = [t for t, ok in zip(design.terms(), estimable) if not ok]
    return dataclasses.replace(design, runs=kept, skipped={**design.skipped, **{tuple(c): r for c, r in
                                                                                 forbidden.items()}},
                               not_estimable=missing)


def _terms(k: int) -> list[tuple[int, ...]]:
    """Main effects, then two-factor interactions, as tuples of factor indices."""
    return [(i,) for i in range(k)] + list(itertools.combinations(range(k), 2))


def _term_name(names: Sequence[str], term: Sequence[int]) -> str:
    return ":".join(names[i] for i in term)


def _mask(term: Sequence[int]) -> int:
    return sum(1 << i for i in term)


def _word(names: Sequence[str], mask: int, sign: int) -> str:
    """A signed product of factors, 'a:b:c' or '-a:b:c'."""
    return ("-" if sign < 0 else "") + ":".join(n for i, n in enumerate(names) if mask >> i & 1)


def _relation(runs: Sequence[Config], k: int) -> list[tuple[int, int]]:
    """The defining relation, (sign, factor mask) per word: every product of factors whose x is the same on
    every run (its number of factors on has one parity); sign = that product's value."""
    masks = np.arange(1, 2 ** k)
    bits = (masks[:, None] >> np.arange(k)) & 1  # [M, k]
    parity = (np.asarray(runs) @ bits.T) % 2  # [R, M]: parity of the factors on, per product
    constant = (parity == parity[0]).all(axis=0)
    return [(int((-1) ** (int(bits[j].sum()) + int(parity[0, j]))), int(masks[j])) for j in np.flatnonzero(constant)]


def _aliases_of(names: Sequence[str], mask: int, relation: Sequence[tuple[int, int]]) -> list[str]:
    """The terms that share a term's column: its product with each word, signed, shortest first."""
    words = [(bin(mask ^ m).count("1"), _word(names, mask ^ m, s)) for s, m in relation]
    return [w for _, w in sorted(words)]


def _model_matrix(runs: Sequence[Config], k: int) -> np.ndarray:
    """[runs, terms]: x_i for the main effects, x_i x_j for the interactions, x = 2 * level - 1."""
    x = 2.0 * np.asarray(runs, dtype=float).reshape(len(runs), k) - 1.0
    return np.column_stack([x[:, list(t)].prod(axis=1) for t in _terms(k)])


def _estimable(gram: np.ndarray, forced: int = 0) -> list[bool]:
    """Which columns of a model matrix (given its Gram matrix X'X) can be estimated, in order: the first
    `forced` always, each later one if it adds to the rank of those kept."""
    tol = 1e-9 * max(1.0, float(np.abs(np.diag(gram)).max(initial=0.0)))
    keep = list(range(forced))
    for j in range(forced, len(gram)):
        trial = keep + [j]
        if np.linalg.matrix_rank(gram[np.ix_(trial, trial)], tol=tol, hermitian=True) == len(trial):
            keep.append(j)
    return [j in keep for j in range(len(gram))]


# ---- effects ----


def _normalized(design: Design, blocks: Blocks) -> list[list[dict[Config, float]]]:
    """`blocks` with tuple keys and the missing (None) entries left out. Raises ValueError for a configuration
    that is not a run of the design or a time that is not a positive number."""
    runs = set(design.runs)
    out = []
    for proc in blocks:
        rounds = []
        for rd in proc:
            clean = {}
            for config, t in rd.items():
                config = tuple(config)
                if config not in runs:
                    raise ValueError(f"configuration {config} is not a run of the design")
                if t is None:
                    continue
                if not (isinstance(t, numbers.Real) and math.isfinite(t) and t > 0):
                    raise ValueError(f"block time of {config} must be a positive number of seconds (got {t!r})")
                clean[config] = float(t)
            rounds.append(clean)
        out.append(rounds)
    return out


def _round_sums(design: Design, blocks: list[list[dict[Config, float]]]) -> dict[str, np.ndarray]:
    """Per usable round (two configurations or more): X'X and X'y of its observations centred on the round's
    mean (the round's own term projected out), y'y, the observation count and the process index."""
    k = len(design.names)
    rows = dict(zip(design.runs, _model_matrix(design.runs, k)))
    grams, cross, yy, count, process = [], [], [], [], []
    for p, proc in enumerate(blocks):
        for rd in proc:
            if len(rd) < 2:
                continue
            x = np.array([rows[c] for c in rd])
            y = np.log(np.fromiter(rd.values(), dtype=float))
            x, y = x - x.mean(axis=0), y - y.mean()
            grams.append(x.T @ x), cross.append(x.T @ y), yy.append(y @ y), count.append(len(y)), process.append(p)
    terms = len(_terms(k))
    return {"gram": np.array(grams).reshape(-1, terms, terms), "cross": np.array(cross).reshape(-1, terms),
            "yy": np.array(yy), "count": np.array(count), "process": np.array(process, dtype=int)}


def _round_weights(process: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[resamples, rounds]: how often each round is drawn when the processes are drawn with replacement (one
    process: itself), then each drawn process's rounds with replacement (stats' two-level bootstrap)."""
    procs = np.unique(process)
    members = [np.flatnonzero(process == p) for p in procs]
    sizes = np.array([len(m) for m in members])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = np.concatenate(members)
    k, widest = len(procs), int(sizes.max())
    pick = rng.integers(0, k, size=(resamples, k)) if k > 1 else np.zeros((resamples, 1), dtype=int)
    n = sizes[pick][:, :, None]
    slot = starts[pick][:, :, None] + np.floor(rng.random((resamples, k, widest)) * n).astype(int)
    drawn = np.where(np.arange(widest)[None, None, :] < n, order[np.minimum(slot, len(order) - 1)], -1)
    weights = np.zeros((resamples, len(process)))
    rows = np.broadcast_to(np.arange(resamples)[:, None, None], drawn.shape)
    np.add.at(weights, (rows[drawn >= 0], drawn[drawn >= 0]), 1.0)
    return weights


def _solve(gram: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """Least-squares coefficients from stacked normal equations ([..., p, p], [..., p])."""
    return np.einsum("...ij,...j->...i", np.linalg.pinv(gram, rtol=1e-10, hermitian=True), cross)


def _process_dfs(sums: dict[str, np.ndarray], keep: np.ndarray) -> list[float | None]:
    """Per kept coefficient, Satterthwaite's df (stats.variance_components) of its per-round estimates grouped by
    process, from the rounds that estimate every kept term on their own; None with one process (no widening)."""
    grams = sums["gram"][:, keep][:, :, keep]
    full = np.linalg.matrix_rank(grams, hermitian=True) == len(keep)
    per_round = _solve(grams[full], sums["cross"][full][:, keep])  # [rounds, kept terms]
    procs = sums["process"][full]
    if len(np.unique(procs)) < 2:
        return [None] * len(keep)
    return [stats.variance_components([np.exp(per_round[procs == p, j]) for p in np.unique(procs)])["df"]
            for j in range(len(keep))]


def estimate(design: Design, blocks: Blocks, min_effect: float = stats.MIN_EFFECT, busy: str | None = None,
             resamples: int = stats.BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Main effects and two-factor interactions from block times, `blocks[process][round][config]` = the block
    median (seconds; a configuration missing from a round, or None, failed there).

    Model: log t = (process, round) term + sum b_i x_i + sum b_ij x_i x_j, least squares. A main effect is the
    speedup factor exp(-2 b_i): time with the factor off / time with it on, averaged over the design. An
    interaction is exp(-4 b_ij) = speedup(both) / (speedup(i alone) x speedup(j alone)): above 1 the pair is
    super-additive, below 1 sub-additive. Interval: 95% percentile bootstrap over processes then rounds (refit
    per resample), widened by t(df) / z with several processes. Verdicts by `stats.verdict`, interactions
    renamed; every verdict "inconclusive" when `busy` (its reason) or with fewer than stats.MIN_PAIRS rounds.
    Terms the timed configurations cannot estimate are not fitted (taken as 0) and say so.

    Returns {model, rounds, processes, resamples, min_effect, residual_sd (of log time, None without spare
    degrees of freedom), not_estimable, main: [term], interactions: [term]}, each term {term, factors, factor,
    ci95, verdict, reason, df, aliases}."""
    sums = _round_sums(design, _normalized(design, blocks))
    rounds, names, terms = len(sums["count"]), design.names, design.terms()
    ok = _estimable(sums["gram"].sum(axis=0)) if rounds else [False] * len(terms)
    fit = _fit(sums, np.flatnonzero(ok), resamples, seed)
    results = []
    for j, (term, idx) in enumerate(zip(terms, _terms(len(names)))):
        scale = -2.0 if len(idx) == 1 else -4.0  # log factor = -2 b (main effect), -4 b (interaction)
        row = _term_result(scale * fit["coef"][j], scale * fit["boot"][:, j], fit["df"][j], rounds, min_effect,
                           busy, interaction=len(idx) > 1)
        if not ok[j]:
            row["reason"] = _not_estimable_reason(design, term, rounds)
        results.append({"term": term, "factors": [names[i] for i in idx], **row,
                        "aliases": list(design.aliases.get(term, []))})
    return {"model": MODEL, "rounds": rounds, "processes": len(np.unique(sums["process"])), "resamples": resamples,
            "min_effect": min_effect, "residual_sd": fit["residual_sd"],
            "not_estimable": [t for t, good in zip(terms, ok) if not good],
            "main": [r for r in results if len(r["factors"]) == 1],
            "interactions": [r for r in results if len(r["factors"]) == 2]}


def _fit(sums: dict[str, np.ndarray], keep: np.ndarray, resamples: int, seed: int) -> dict[str, Any]:
    """Coefficients of the kept terms (NaN elsewhere), their bootstrap draws [resamples, terms], each one's df
    for the t-widening and the residual sd of log time. A resampled round enters as many times as drawn: the
    normal equations are sums over rounds, so each resample is one weighted sum and one solve."""
    p = sums["gram"].shape[-1]
    out = {"coef": np.full(p, np.nan), "boot": np.full((resamples, p), np.nan), "df": [None] * p,
           "residual_sd": None}
    if not len(keep):
        return out
    gram, cross = sums["gram"].sum(axis=0)[np.ix_(keep, keep)], sums["cross"].sum(axis=0)[keep]
    out["coef"][keep] = _solve(gram, cross)
    rss = float(sums["yy"].sum() - out["coef"][keep] @ cross)  # centred: y'y - b'X'y at the least-squares b
    spare = int(sums["count"].sum()) - len(sums["count"]) - len(keep)
    out["residual_sd"] = math.sqrt(max(rss, 0.0) / spare) if spare > 0 else None
    weights = _round_weights(sums["process"], resamples, np.random.default_rng(seed))
    drawn = (weights @ sums["gram"].reshape(weights.shape[1], -1)).reshape(resamples, p, p)
    out["boot"][:, keep] = _solve(drawn[:, keep][:, :, keep], (weights @ sums["cross"])[:, keep])
    for j, df in zip(keep.tolist(), _process_dfs(sums, keep)):
        out["df"][j] = df
    return out


def _term_result(center: float, draws: np.ndarray, df: float | None, rounds: int, min_effect: float,
                 busy: str | None, interaction: bool) -> dict[str, Any]:
    """One term's factor, interval (log scale in, factors out), df and verdict."""
    if not math.isfinite(center):
        return {"factor": None, "ci95": None, "verdict": "inconclusive", "reason": busy, "df": None}
    lo, hi = (float(v) for v in np.percentile(draws, [2.5, 97.5]))
    if df is not None:
        widen = stats.t_quantile(df) / NormalDist().inv_cdf(0.975)
        lo, hi = center - widen * (center - lo), center + widen * (hi - center)
    factor, lo, hi = math.exp(center), math.exp(lo), math.exp(hi)
    word, reason = stats.verdict(factor, lo, hi, min_effect, busy)
    if not busy and rounds < stats.MIN_PAIRS:
        word, reason = "inconclusive", f"only {rounds} rounds (a verdict needs {stats.MIN_PAIRS})"
    if interaction:
        word = INTERACTION_WORDS.get(word, word)
    return {"factor": factor, "ci95": [lo, hi], "verdict": word, "reason": reason, "df": df}


def _not_estimable_reason(design: Design, term: str, rounds: int) -> str:
    if not rounds:
        return "no rounds timed"
    if term in design.not_estimable:
        skipped = "; ".join(_label(design, c) for c in design.skipped)
        return f"not estimable: the skipped configurations ({skipped}) confound it; taken as 0 in the fit"
    return "not estimable from the configurations timed (some failed in every round); taken as 0 in the fit"


def _label(design: Design, config: Config) -> str:
    """A configuration's factors on, joined with '+', or 'baseline'."""
    return "+".join(n for n, level in zip(design.names, config) if level) or "baseline"


def config_speedups(design: Design, blocks: Blocks, min_effect: float = stats.MIN_EFFECT, busy: str | None = None,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Each configuration but the baseline against the baseline: stats.compare_groups of the per-round ratios
    t_baseline / t_config, one list per process (the statistic of an ordinary paired case). Returns
    [{config (list of 0/1), label, **compare_groups' keys}] in the design's order."""
    rounds, baseline = _normalized(design, blocks), design.runs[0]
    out = []
    for config in design.runs[1:]:
        groups = [[rd[baseline] / rd[config] for rd in proc if baseline in rd and config in rd] for proc in rounds]
        out.append({"config": list(config), "label": _label(design, config),
                    **stats.compare_groups(groups, min_effect, busy, seed)})
    return out


# ---- the answer: front and best within a budget ----


@dataclass
class Point:
    """One configuration as a user chooses among them: objective (higher is better, e.g. tokens/s), peak memory
    (bytes, lower is better), quality (higher is better; None where it does not vary), valid (its invariant
    held) and reason (why not valid)."""

    config: Any
    objective: float | None
    peak_bytes: float | None
    quality: float | None = None
    valid: bool = True
    reason: str | None = None


def _why_out(point: Point) -> str | None:
    """Why a point cannot be on the front or win (None if it can)."""
    if not point.valid:
        return point.reason or "invariant failed"
    if point.objective is None or not math.isfinite(point.objective):
        return "objective not measured"
    if point.peak_bytes is None or not math.isfinite(point.peak_bytes):
        return "peak memory not measured"
    return None


def _dominates(p: Point, q: Point) -> bool:
    """p is at least as good as q on every measure (quality only where both have it) and better on one."""
    pairs = [(p.objective, q.objective), (-p.peak_bytes, -q.peak_bytes)]
    if p.quality is not None and q.quality is not None:
        pairs.append((p.quality, q.quality))
    return all(a >= b for a, b in pairs) and any(a > b for a, b in pairs)


def excluded(points: Sequence[Point]) -> list[dict[str, Any]]:
    """The points that are never on the front nor a winner, [{config, reason}]: invariant broken, or objective
    or memory not measured."""
    return [{"config": p.config, "reason": _why_out(p)} for p in points if _why_out(p)]


def pareto_front(points: Sequence[Point]) -> list[dict[str, Any]]:
    """The valid, measured points no other such point dominates, by peak memory (then objective, best first),
    as dicts of Point's fields."""
    usable = [p for p in points if not _why_out(p)]
    front = [p for p in usable if not any(_dominates(q, p) for q in usable)]
    return [dataclasses.asdict(p) for p in sorted(front, key=lambda p: (p.peak_bytes, -p.objective))]


def _ratio_groups(rounds: RatioGroups | Sequence[Sequence[Mapping[Any, float]]]) -> RatioGroups:
    """`rounds` as a function (a, b) -> per-process lists of per-round t_b / t_a (> 1: a faster)."""
    if callable(rounds):
        return rounds
    return lambda a, b: [[rd[b] / rd[a] for rd in proc if rd.get(a) and rd.get(b)] for proc in rounds]


def best_within(points: Sequence[Point], budget_bytes: float, rounds: RatioGroups | Blocks,
                min_effect: float = stats.MIN_EFFECT, busy: str | None = None, baseline: Any = None,
                seed: int = 0) -> dict[str, Any]:
    """The valid point with the highest objective whose peak memory is within `budget_bytes` (math.inf: no
    budget), against the baseline (`baseline`, else the first point's config) and the runner-up (the next best
    such point), each by stats.compare_groups of per-round time ratios. `rounds`: [process][round][config] ->
    block median (seconds), or a function (a, b) -> per-process lists of t_b / t_a.

    Returns {config, objective, peak_bytes, budget_bytes, vs_baseline, runner_up, vs_runner_up, conclusion,
    reason, smallest_peak_bytes, excluded}; with nothing within the budget, config None and reason "no
    configuration fits the budget of X GiB (...)"."""
    usable = [p for p in points if not _why_out(p)]
    fits = sorted((p for p in usable if p.peak_bytes <= budget_bytes), key=lambda p: (-p.objective, p.peak_bytes))
    smallest = min(usable, key=lambda p: p.peak_bytes, default=None)
    out = {"config": None, "objective": None, "peak_bytes": None,
           "budget_bytes": budget_bytes if math.isfinite(budget_bytes) else None, "vs_baseline": None,
           "runner_up": None, "vs_runner_up": None, "conclusion": None, "reason": None,
           "smallest_peak_bytes": smallest.peak_bytes if smallest else None, "excluded": excluded(points)}
    if not fits:
        seen = (f"the smallest peak measured: {_gib(smallest.peak_bytes)} GiB, {smallest.config}" if smallest
                else "no valid configuration was measured")
        return {**out, "reason": f"no configuration fits the budget of {_gib(budget_bytes)} GiB ({seen})"}
    winner, runner = fits[0], (fits[1] if len(fits) > 1 else None)
    ratios = _ratio_groups(rounds)
    base = baseline if baseline is not None else (points[0].config if points else None)
    compare = lambda a, b: stats.compare_groups(ratios(a, b), min_effect, busy, seed)
    out.update(config=winner.config, objective=winner.objective, peak_bytes=winner.peak_bytes,
               vs_baseline=compare(winner.config, base) if base is not None and winner.config != base else None)
    if runner is None:
        return {**out, "conclusion": f"{winner.config} is the only valid configuration within the budget"}
    versus = compare(winner.config, runner.config)
    return {**out, "runner_up": runner.config, "vs_runner_up": versus,
            "conclusion": _conclusion(winner.config, runner.config, versus)}


def _conclusion(winner: Any, runner: Any, versus: dict[str, Any]) -> str:
    """What the winner-vs-runner-up comparison says, in words."""
    word = versus["verdict"]
    if word == "faster":
        return f"{winner} is significantly faster than the runner-up {runner}"
    if word == "slower":
        return (f"the runner-up {runner} is significantly faster per round than {winner}, whose objective is "
                "higher: the objective and the block times disagree")
    if word == "no significant difference":
        return f"{winner} and the runner-up {runner} are indistinguishable (within the equivalence band)"
    return f"{winner} and the runner-up {runner} are indistinguishable here (inconclusive: {versus['reason']})"


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g}"
