"""Factorial designs and their estimates (harness.core.factorial) on synthetic block streams: no timing, no torch."""

import itertools
import json
import math

import numpy as np
import pytest

from harness.core import factorial, stats
from harness.core.factorial import Point

RESAMPLES = 300  # enough for the intervals these tests read, far fewer than a run's 2000


def coefficients(design, mains, interactions):
    """Model coefficients b (log time, x = +-1) from speedup factors: main exp(-2 b_i), interaction exp(-4 b_ij)."""
    b = {name: -math.log(mains.get(name, 1.0)) / 2 for name in design.names}
    for a, c in itertools.combinations(design.names, 2):
        b[f"{a}:{c}"] = -math.log(interactions.get(f"{a}:{c}", 1.0)) / 4
    return b


def true_log_time(design, b, config):
    x = {n: 2 * level - 1 for n, level in zip(design.names, config)}
    out = math.log(0.1)
    for term, value in b.items():
        out += value * math.prod(x[n] for n in term.split(":"))
    return out


def stream(design, mains, interactions=None, rounds=12, processes=1, sigma=0.02, seed=1, process_offsets=None,
           round_factor=None, drift=0.0, effect_spread=None):
    """blocks[process][round][config] = block median: the model's time x lognormal noise, optionally times a
    per-process offset, a per-round factor (a burst of load), a drift over the stream's blocks in a random
    order within each round, and per-process noise on the first factor's main effect (sd `effect_spread`)."""
    rng = np.random.default_rng(seed)
    b = coefficients(design, mains, interactions or {})
    total = processes * rounds * len(design.runs)
    position, out = 0, []
    for p in range(processes):
        own = dict(b)
        if effect_spread:
            own[design.names[0]] += rng.normal(0, effect_spread)
        proc = []
        for r in range(rounds):
            noise = rng.normal(0, sigma, len(design.runs))
            order = rng.permutation(len(design.runs))
            rd = {}
            for slot, i in enumerate(order):
                config = design.runs[i]
                log_t = true_log_time(design, own, config) + noise[i]
                log_t += math.log(process_offsets[p]) if process_offsets else 0.0
                log_t += math.log(round_factor(p, r)) if round_factor else 0.0
                log_t += drift * (position + slot) / total
                rd[config] = math.exp(log_t)
            position += len(design.runs)
            proc.append(rd)
        out.append(proc)
    return out


def known_se(design, rounds, sigma, terms):
    """The standard error of each term's log factor when every round times every run with lognormal noise
    `sigma`: least squares with a term per round, sigma^2 (X'X)^-1 on the round-centred columns."""
    x = 2.0 * np.array(design.runs) - 1
    index = {n: i for i, n in enumerate(design.names)}
    cols = np.column_stack([x[:, [index[n] for n in t.split(":")]].prod(axis=1) for t in terms])
    cols -= cols.mean(axis=0)
    cov = sigma ** 2 * np.linalg.inv(rounds * cols.T @ cols)
    return {t: (2 if ":" not in t else 4) * math.sqrt(cov[i, i]) for i, t in enumerate(terms)}


def assert_recovered(terms, true, se):
    """Every true factor within 4 standard errors (`known_se`) of the estimate, and the intervals as wide as those
    standard errors say: half-widths / (1.96 se) average 0.6-1.5 over the terms, none outside 1/3-3 (one draw's
    interval widths vary by ~18% with 16 rounds). Not "every truth inside its 95% interval": a test reads 6-36
    terms of one draw, so that fails on a good share of seeds; how often the intervals hold the truth is tested
    across seeds (test_intervals_cover_the_true_factors_about_95_percent_of_the_time)."""
    widths = []
    for term, value in true.items():
        center, (lo, hi) = math.log(terms[term]["factor"]), (math.log(v) for v in terms[term]["ci95"])
        assert lo < center < hi, term
        assert abs(center - math.log(value)) <= 4 * se[term], (terms[term], value, se[term])
        widths.append((hi - lo) / 2 / (1.96 * se[term]))
    assert 0.6 <= np.mean(widths) <= 1.5 and 1 / 3 <= min(widths) and max(widths) <= 3, widths


def terms_by_name(result):
    return {t["term"]: t for t in result["main"] + result["interactions"]}


def truth(design, mains, interactions):
    return {**{n: mains.get(n, 1.0) for n in design.names},
            **{f"{a}:{c}": interactions.get(f"{a}:{c}", 1.0) for a, c in itertools.combinations(design.names, 2)}}


# ---- designs ----


@pytest.mark.parametrize("k, runs", [(1, 2), (3, 8), (5, 32), (6, 32), (7, 64), (8, 64), (9, 128), (10, 128)])
def test_designs_are_full_up_to_five_factors_and_resolution_five_or_more_above(k, runs):
    d = factorial.design([f"opt{i}" for i in range(k)])
    assert len(d.runs) == runs == len(set(d.runs))
    assert d.runs[0] == (0,) * k  # the baseline, first
    if k <= 5:
        assert d.relation == [] and d.resolution is None and not d.alias_lines()
        assert all(a == [] for a in d.aliases.values())
    else:
        assert min(len(w.lstrip("-").split(":")) for w in d.relation) >= 5
        assert len(d.relation) == 2 ** (k - math.log2(runs)) - 1  # every product of the generators' words
        # every main effect and two-factor interaction is aliased only with terms of three factors or more
        assert set(d.aliases) == set(d.terms()) and len(d.terms()) == k + k * (k - 1) // 2
        for term, others in d.aliases.items():
            assert others and all(len(o.lstrip("-").split(":")) >= 3 for o in others), term
    # independently of d.relation: no product of four factors or fewer is constant over the runs, and the main
    # effects' and two-factor interactions' columns are orthogonal (each estimated free of the others)
    x = 2 * np.array(d.runs) - 1
    for size in range(1, min(k, 4) + 1):
        for subset in itertools.combinations(range(k), size):
            assert len(set(x[:, list(subset)].prod(axis=1))) == 2, subset
    cols = np.column_stack([x[:, list(t)].prod(axis=1) for t in
                            [(i,) for i in range(k)] + list(itertools.combinations(range(k), 2))])
    assert (cols.T @ cols == runs * np.eye(cols.shape[1])).all()


def test_defining_relation_and_aliases_are_computed_from_the_runs():
    d6 = factorial.design(list("abcdef"))
    assert d6.relation == ["a:b:c:d:e:f"] and d6.generators == ["f = a:b:c:d:e"]
    assert d6.aliases["a"] == ["b:c:d:e:f"] and d6.aliases["a:b"] == ["c:d:e:f"]
    x = 2 * np.array(d6.runs) - 1
    assert (x.prod(axis=1) == 1).all()  # I = ABCDEF on every run
    d8 = factorial.design(list("abcdefgh"))
    assert d8.relation == ["-a:b:c:d:g", "-a:b:e:f:h", "c:d:e:f:g:h"]
    assert "a = -b:c:d:g = -b:e:f:h = a:c:d:e:f:g:h" in d8.alias_lines()
    assert d8.aliases["g:h"] == ["c:d:e:f", "-a:b:c:d:h", "-a:b:e:f:g"]  # shortest first


def test_the_ten_factor_generators_are_checked_not_copied():
    """J = ACDE (with H = ABCG, K = ACDF) would alias two-factor interactions with each other: J*K = EFJK."""
    base = np.array(list(itertools.product((0, 1), repeat=7)))
    levels = lambda letters: base[:, ["ABCDEFG".index(c) for c in letters]].sum(axis=1) % 2
    runs = np.column_stack([base, levels("ABCG"), levels("ACDE"), levels("ACDF")])
    x = 2 * runs - 1
    assert len(set(x[:, [4, 5, 8, 9]].prod(axis=1))) == 1  # E F J K constant: a word of four letters
    assert factorial.design(list("abcdefghjk")).generators[1] == "j = -b:c:d:e"  # Montgomery's J = BCDE
    assert factorial.design(list("abcdefghjk")).resolution == 5


@pytest.mark.parametrize("names, problem", [([], "k = 0"), ([f"o{i}" for i in range(11)], "at most 10"),
                                            (["lora", "bf16", "lora"], "lora given twice"),
                                            (["a:b"], "without ':'")])
def test_bad_factor_lists_are_refused_naming_the_problem(names, problem):
    with pytest.raises(ValueError, match=problem):
        factorial.design(names)


def test_design_survives_json():
    d = factorial.drop(factorial.design(list("abc")), {(1, 1, 0): "a conflicts with b", (1, 1, 1): "a with b"})
    again = factorial.Design.from_dict(json.loads(json.dumps(d.as_dict())))
    assert again == d


# ---- effects, full factorials ----

MAINS3 = {"a": 1.5, "b": 0.8, "c": 1.0}
INTER3 = {"a:b": 1.3}  # strongly super-additive; a:c and b:c zero


def test_full_factorial_k3_recovers_effects_and_reads_verdicts():
    d = factorial.design(list("abc"))
    result = factorial.estimate(d, stream(d, MAINS3, INTER3, rounds=20), resamples=RESAMPLES)
    terms = terms_by_name(result)
    assert_recovered(terms, truth(d, MAINS3, INTER3), known_se(d, 20, 0.02, d.terms()))
    assert [terms[n]["verdict"] for n in "abc"] == ["faster", "slower", "no significant difference"]
    assert terms["a:b"]["verdict"] == "super-additive"
    assert terms["a:c"]["verdict"] == terms["b:c"]["verdict"] == "no significant interaction"
    assert result["rounds"] == 20 and result["not_estimable"] == []
    assert result["residual_sd"] == pytest.approx(0.02, rel=0.2)


def test_full_factorial_k5_recovers_effects_and_a_sub_additive_pair():
    d = factorial.design(list("abcde"))
    mains = {"a": 1.4, "b": 1.2, "c": 0.9, "d": 1.0, "e": 2.0}
    inter = {"a:b": 1.25, "c:e": 0.8}
    terms = terms_by_name(factorial.estimate(d, stream(d, mains, inter, rounds=20), resamples=RESAMPLES))
    assert_recovered(terms, truth(d, mains, inter), known_se(d, 20, 0.02, d.terms()))
    assert terms["a:b"]["verdict"] == "super-additive" and terms["c:e"]["verdict"] == "sub-additive"
    zero = [t for t in terms if ":" in t and t not in inter]
    assert all(terms[t]["verdict"] == "no significant interaction" for t in zero)
    # exp(-4 b_ab) is the ratio of speedups: both / (a alone x b alone), read off the model's configurations
    b = coefficients(d, mains, inter)
    t = {c: true_log_time(d, b, c) for c in [(0,) * 5, (1, 0, 0, 0, 0), (0, 1, 0, 0, 0), (1, 1, 0, 0, 0)]}
    both, a_alone, b_alone = (math.exp(t[(0,) * 5] - t[c]) for c in [(1, 1, 0, 0, 0), (1, 0, 0, 0, 0),
                                                                        (0, 1, 0, 0, 0)])
    assert both / (a_alone * b_alone) == pytest.approx(1.25)


def test_intervals_cover_the_true_factors_about_95_percent_of_the_time():
    d = factorial.design(list("abc"))
    true = truth(d, MAINS3, INTER3)
    hits = []
    for seed in range(30):
        terms = terms_by_name(factorial.estimate(d, stream(d, MAINS3, INTER3, rounds=12, processes=2, seed=seed),
                                                 resamples=RESAMPLES, seed=seed))
        hits += [terms[t]["ci95"][0] <= v <= terms[t]["ci95"][1] for t, v in true.items()]
    assert 0.88 <= np.mean(hits) <= 0.995, np.mean(hits)


def test_a_burst_of_load_on_one_round_and_a_drift_leave_the_estimates():
    d = factorial.design(list("abc"))
    quiet = terms_by_name(factorial.estimate(d, stream(d, MAINS3, INTER3, rounds=12), resamples=RESAMPLES))
    # x3 on every configuration of round 4, and a 3% drift from round to round: each round's term takes it all
    loaded = lambda p, r: (3.0 if r == 4 else 1.0) * 1.03 ** r
    burst = terms_by_name(factorial.estimate(d, stream(d, MAINS3, INTER3, rounds=12, round_factor=loaded),
                                             resamples=RESAMPLES))
    for term, row in quiet.items():
        assert burst[term]["factor"] == pytest.approx(row["factor"], rel=1e-9)
        assert burst[term]["ci95"] == pytest.approx(row["ci95"], rel=1e-9)
    # a drift of 50% over the whole stream, within rounds too (each round's order is random): what a round's
    # term cannot take is noise of about 1% a block against the 2% of the quiet stream
    drift = terms_by_name(factorial.estimate(d, stream(d, MAINS3, INTER3, rounds=12, drift=math.log(1.5)),
                                             resamples=RESAMPLES))
    se = known_se(d, 12, 0.02, d.terms())
    for term, row in quiet.items():
        assert abs(math.log(drift[term]["factor"] / row["factor"])) <= 2 * se[term], term
    assert [drift[t]["verdict"] for t in ("a", "b", "a:b")] == ["faster", "slower", "super-additive"]


def test_missing_blocks_are_allowed_and_every_verdict_needs_five_rounds():
    d = factorial.design(list("abc"))
    blocks = stream(d, MAINS3, INTER3, rounds=12)
    del blocks[0][3][(1, 0, 1)], blocks[0][7][(0, 1, 1)]
    blocks[0][5][(1, 1, 1)] = None
    terms = terms_by_name(factorial.estimate(d, blocks, resamples=RESAMPLES))
    assert terms["a"]["verdict"] == "faster" and terms["a:b"]["verdict"] == "super-additive"
    few = factorial.estimate(d, stream(d, MAINS3, INTER3, rounds=4), resamples=RESAMPLES)
    for term in few["main"] + few["interactions"]:
        assert term["verdict"] == "inconclusive"
        assert term["reason"] == f"only 4 rounds (a verdict needs {stats.MIN_PAIRS})"
        assert term["factor"] is not None
    busy = factorial.estimate(d, blocks, busy="machine busy: foreign CPU 40% of 2 cores", resamples=RESAMPLES)
    assert {(t["verdict"], t["reason"]) for t in busy["main"] + busy["interactions"]} == {
        ("inconclusive", "machine busy: foreign CPU 40% of 2 cores")}


def test_blocks_outside_the_design_or_not_times_are_refused():
    d = factorial.design(list("abcdef"))
    with pytest.raises(ValueError, match="not a run of the design"):
        factorial.estimate(d, [[{(0,) * 6: 1.0, (1, 0, 0, 0, 0, 0): 1.0}]])  # f = a:b:c:d:e: a alone isn't run
    with pytest.raises(ValueError, match="positive number"):
        factorial.estimate(d, [[{(0,) * 6: 1.0, (1, 0, 0, 0, 0, 1): -2.0}]])


# ---- fractional designs ----


@pytest.mark.parametrize("names, mains, inter", [
    (list("abcdef"), {"a": 1.5, "b": 0.85, "c": 1.2, "f": 1.3}, {"a:b": 1.2, "c:f": 0.85, "a:f": 1.1}),
    (list("abcdefgh"), {"a": 1.5, "c": 1.2, "g": 0.8, "h": 1.4}, {"a:h": 1.2, "b:g": 0.85, "g:h": 1.15}),
])
def test_fractional_designs_recover_main_effects_and_two_factor_interactions(names, mains, inter):
    d = factorial.design(names)
    result = factorial.estimate(d, stream(d, mains, inter, rounds=16), resamples=RESAMPLES)
    terms = terms_by_name(result)
    assert_recovered(terms, truth(d, mains, inter), known_se(d, 16, 0.02, d.terms()))
    assert all(terms[t]["aliases"] == d.aliases[t] != [] for t in terms)
    for term, value in inter.items():
        assert terms[term]["verdict"] == ("super-additive" if value > 1 else "sub-additive"), term


# ---- processes ----


def test_process_offsets_do_not_bias_and_effect_spread_widens_the_interval():
    d = factorial.design(list("abc"))
    plain = factorial.estimate(d, stream(d, MAINS3, INTER3, processes=5, rounds=8), resamples=RESAMPLES)
    offset = factorial.estimate(d, stream(d, MAINS3, INTER3, processes=5, rounds=8,
                                          process_offsets=[1.0, 1.6, 0.7, 1.2, 2.0]), resamples=RESAMPLES)
    for term, row in terms_by_name(plain).items():
        assert terms_by_name(offset)[term]["factor"] == pytest.approx(row["factor"], rel=1e-9)
    spread = factorial.estimate(d, stream(d, MAINS3, INTER3, processes=5, rounds=8, effect_spread=0.05),
                                resamples=RESAMPLES)
    width = lambda r: math.log(r["ci95"][1] / r["ci95"][0])
    a_plain, a_spread = terms_by_name(plain)["a"], terms_by_name(spread)["a"]
    assert width(a_spread) > 2 * width(a_plain)
    assert a_spread["df"] is not None and a_spread["df"] < 10  # the processes dominate: few degrees of freedom
    assert plain["processes"] == 5 and plain["rounds"] == 40


# ---- skipped configurations ----


def test_forbidden_configurations_are_skipped_and_confounded_terms_named():
    d = factorial.design(list("abc"))
    reduced = factorial.drop(d, {(1, 1, 0): "b conflicts with a", (1, 1, 1): "b conflicts with a"})
    assert reduced.skipped == {(1, 1, 0): "b conflicts with a", (1, 1, 1): "b conflicts with a"}
    assert (1, 1, 0) not in reduced.runs and len(reduced.runs) == 6 and reduced.not_estimable == ["a:b"]
    result = factorial.estimate(reduced, stream(reduced, MAINS3, {}, rounds=20), resamples=RESAMPLES)
    terms = terms_by_name(result)
    assert result["not_estimable"] == ["a:b"]
    assert terms["a:b"]["factor"] is None and terms["a:b"]["verdict"] == "inconclusive"
    assert "not estimable" in terms["a:b"]["reason"] and "a+b" in terms["a:b"]["reason"]
    fitted = [t for t in d.terms() if t != "a:b"]
    assert_recovered(terms, {t: truth(d, MAINS3, {})[t] for t in fitted}, known_se(reduced, 20, 0.02, fitted))
    with pytest.raises(ValueError, match="baseline"):
        factorial.drop(d, {(0, 0, 0): "no"})
    with pytest.raises(ValueError, match="not a run"):
        factorial.drop(factorial.design(list("abcdef")), {(1, 0, 0, 0, 0, 0): "no"})


# ---- per configuration, front, best ----


def test_each_configuration_against_the_baseline_is_a_paired_case():
    d = factorial.design(list("ab"))
    mains, inter = {"a": 1.5, "b": 1.0}, {"a:b": 1.0}
    rows = {tuple(r["config"]): r for r in factorial.config_speedups(d, stream(d, mains, inter, rounds=20))}
    assert set(rows) == {(1, 0), (0, 1), (1, 1)} and rows[(1, 1)]["label"] == "a+b"
    assert rows[(1, 0)]["speedup"] == pytest.approx(1.5, rel=0.03) and rows[(1, 0)]["verdict"] == "faster"
    assert rows[(0, 1)]["verdict"] == "no significant difference" and rows[(0, 1)]["pairs"] == 20


def points_and_rounds(times, rounds=12, sigma=0.01, seed=3):
    """Per-config true times -> blocks [1 process][round][config] with lognormal noise."""
    rng = np.random.default_rng(seed)
    return [[{c: t * math.exp(rng.normal(0, sigma)) for c, t in times.items()} for _ in range(rounds)]]


GIB = 2 ** 30


def test_pareto_front_keeps_the_valid_non_dominated_points_by_memory():
    points = [Point("base", 100.0, 2.0 * GIB), Point("bf16", 180.0, 1.2 * GIB), Point("ckpt", 90.0, 0.8 * GIB),
              Point("dominated", 150.0, 1.5 * GIB), Point("broken", 500.0, 0.5 * GIB, valid=False,
                                                           reason="invariant failed: tokens"),
              Point("unmeasured", None, 0.4 * GIB)]
    front = factorial.pareto_front(points)
    assert [p["config"] for p in front] == ["ckpt", "bf16"]
    assert factorial.excluded(points) == [{"config": "broken", "reason": "invariant failed: tokens"},
                                          {"config": "unmeasured", "reason": "objective not measured"}]
    # quality counts where it varies: a lower-quality point with the same speed and memory is dominated
    q = [Point("int8", 200.0, 1.0 * GIB, quality=0.9), Point("int4", 200.0, 1.0 * GIB, quality=0.8)]
    assert [p["config"] for p in factorial.pareto_front(q)] == ["int8"]


def test_best_within_budget_against_baseline_and_runner_up():
    times = {"base": 0.10, "bf16": 0.05, "ckpt": 0.11, "broken": 0.01, "twin": 0.0502}
    rounds = points_and_rounds(times)
    points = [Point("base", 1 / 0.10, 2.0 * GIB), Point("bf16", 1 / 0.05, 1.0 * GIB),
              Point("ckpt", 1 / 0.11, 0.6 * GIB), Point("broken", 1 / 0.01, 0.5 * GIB, valid=False),
              Point("twin", 1 / 0.0502, 0.9 * GIB)]
    best = factorial.best_within(points, 1.0 * GIB, rounds)
    assert best["config"] == "bf16" and best["peak_bytes"] <= 1.0 * GIB
    assert best["vs_baseline"]["verdict"] == "faster" and best["vs_baseline"]["speedup"] == pytest.approx(2, rel=.02)
    assert best["runner_up"] == "twin" and best["vs_runner_up"]["verdict"] == "no significant difference"
    assert "indistinguishable" in best["conclusion"]
    assert best["excluded"] == [{"config": "broken", "reason": "invariant failed"}]
    apart = factorial.best_within([p for p in points if p.config != "twin"], 1.0 * GIB, rounds)
    assert apart["runner_up"] == "ckpt" and apart["vs_runner_up"]["verdict"] == "faster"
    assert "significantly faster" in apart["conclusion"]
    tight = factorial.best_within(points, 0.7 * GIB, rounds)
    assert tight["config"] == "ckpt" and tight["runner_up"] is None and tight["vs_baseline"]["verdict"] == "slower"
    callable_rounds = lambda a, b: [[rd[b] / rd[a] for rd in rounds[0]]]
    assert factorial.best_within(points, 1.0 * GIB, callable_rounds)["vs_runner_up"] == best["vs_runner_up"]


def test_no_configuration_fits_is_a_result_not_an_exception():
    points = [Point("base", 10.0, 2.0 * GIB), Point("ckpt", 9.0, 1.5 * GIB), Point("broken", 9.0, 0.1 * GIB,
                                                                                   valid=False)]
    best = factorial.best_within(points, 1.0 * GIB, points_and_rounds({"base": 0.1, "ckpt": 0.11, "broken": 1}))
    assert best["config"] is None and best["smallest_peak_bytes"] == 1.5 * GIB
    assert best["reason"] == "no configuration fits the budget of 1 GiB (the smallest peak measured: 1.5 GiB, ckpt)"
    assert factorial.best_within([], 1.0 * GIB, [])["reason"].startswith("no configuration fits the budget of 1 GiB")
