"""Recipes: k optimizations on one workload, every combination measured in one design (docs/recipes.md).

A case's `recipe:` block names the optimizations (factors); the design is the full 2^k factorial for k <= 5 and
a resolution-V fractional factorial above (harness.core.factorial). Each configuration of the design is one
side of the case's processes: built, checked against the baseline (every optimization's own invariant), its
memory measured, then timed in rounds in which every configuration runs one block in a seeded random order
(harness.core.timing.paired_blocks, the pairs of an ordinary case with more than two sides). The runner pools
the rounds of the case's processes and estimates each optimization's main effect and each two-factor interaction
on log block time, with bootstrap intervals over processes and rounds (`analyse`); the Pareto front of objective
against peak memory and the best valid configuration within the budget follow.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from harness.core import factorial, stats
from harness.core.optimization import ParamError, applies_to, build_params, validate_in_side

RECIPE_KEYS = ("optimizations", "budget_gb", "objective")
MAX_FACTORS = 10  # the largest resolution-V design harness.core.factorial knows
BASELINE = "baseline"


@dataclass
class Factor:
    """One optimization of a recipe, at one set of parameters: on or off in each configuration."""

    label: str  # the optimization's label (mixed_precision, quantization(method=int8_dynamic))
    name: str
    params: dict[str, Any]


def factors_of(raw: Any, registry: Any) -> list[Factor]:
    """The recipe's factors from its `optimizations` list: a name, {name: {param: value}}, or {name: {param:
    [v1, v2]}} (one factor per value, never two of them in one configuration). Raises ParamError."""
    if not isinstance(raw, list) or not raw:
        raise ParamError("optimizations", "must be a non-empty list of optimizations (k >= 1)")
    out: list[Factor] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            params = params or {}
        else:
            raise ParamError(f"optimizations.{i}", "an optimization is a name or a one-key mapping "
                                                    "{name: {param: value}}")
        if name not in registry.optimizations:
            raise ParamError(f"optimizations.{i}", f"unknown optimization '{name}'")
        if not isinstance(params, dict):
            raise ParamError(f"optimizations.{i}", f"parameters of '{name}' must be a mapping (got {params!r})")
        if any(f.name == name for f in out):
            raise ParamError(f"optimizations.{i}", f"'{name}' is listed twice; give one entry, with a list of "
                                                    "values for the parameter that varies")
        lists = [k for k, v in params.items() if isinstance(v, list)]
        if len(lists) > 1:
            raise ParamError(f"optimizations.{i}", f"'{name}': only one parameter may list values (got "
                                                    f"{', '.join(lists)})")
        values = params[lists[0]] if lists else [None]
        if lists and not values:
            raise ParamError(f"optimizations.{i}", f"'{name}.{lists[0]}' lists no values")
        for value in values:
            these = {**params, lists[0]: value} if lists else dict(params)
            cls = registry.optimizations[name]
            try:
                built = build_params(cls.Params, these)
            except ParamError as exc:
                raise ParamError(f"optimizations.{i}.{exc.field}" if exc.field else f"optimizations.{i}",
                                 str(exc)) from None
            label = cls(built).label()
            if lists:
                label = f"{name}({lists[0]}={value})"
            out.append(Factor(label, name, dataclasses.asdict(built)))
    if len(out) > MAX_FACTORS:
        raise ParamError("optimizations", f"{len(out)} factors; a recipe holds at most {MAX_FACTORS} (a resolution-V "
                                          "fractional design of 2^(10-3) = 128 configurations)")
    return out


def check(raw: Any, registry: Any, workload: type, wname: str, wspec: dict[str, Any],
          baseline: list[dict[str, Any]]) -> dict[str, Any]:
    """The case's recipe block, checked at suite load: its factors, the design (harness.core.factorial) and each
    configuration's plugins (the baseline's, then the configuration's factors in the declared order), with the
    configurations the plugins' own rules forbid (order, conflicts, two values of one parameter) listed as
    skipped with the reason. Raises ParamError(field, message)."""
    if not isinstance(raw, dict):
        raise ParamError("", f"must be a mapping with {', '.join(RECIPE_KEYS)} (got {type(raw).__name__})")
    for key in raw:
        if key not in RECIPE_KEYS:
            raise ParamError(str(key), f"unknown key '{key}' (allowed: {', '.join(RECIPE_KEYS)})")
    factors = factors_of(raw.get("optimizations"), registry)
    for i, factor in enumerate(factors):
        elsewhere = applies_to(registry.optimizations[factor.name], workload, wname)
        if elsewhere:
            raise ParamError(f"optimizations.{i}", f"'{factor.name}' applies to {elsewhere}")
    budget = raw.get("budget_gb")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ParamError("budget_gb", f"must be a positive number of GiB (got {budget!r})")
    objective = raw.get("objective", "auto")
    if not isinstance(objective, str) or not (objective in ("auto", "time") or objective.endswith("_per_s")):
        raise ParamError("objective", f"must be 'auto' (the workload's first throughput), 'time' or a throughput "
                                      f"such as tokens_per_s or samples_per_s (got {objective!r})")
    try:
        design = factorial.design([f.label for f in factors])
    except ValueError as exc:
        raise ParamError("optimizations", str(exc)) from None
    spec = build_params(workload.Spec, wspec)
    configs, forbidden = [], {}
    for levels in design.runs:
        on = [f for f, level in zip(factors, levels) if level]
        reason = _forbidden(on, baseline, registry, spec)
        if reason:
            forbidden[tuple(levels)] = reason
            continue
        configs.append({"label": config_label(on), "levels": list(levels), "plugins": _uses(on, baseline)})
    reduced = factorial.drop(design, forbidden) if forbidden else design
    return {"factors": [dataclasses.asdict(f) for f in factors], "configs": configs,
            "skipped": [{"label": config_label([f for f, lv in zip(factors, levels) if lv]), "levels": list(levels),
                         "reason": why} for levels, why in forbidden.items()],
            "design": reduced.as_dict(), "budget_gb": budget, "objective": objective}


def config_label(on: list[Factor]) -> str:
    """The configuration's name: its factors joined with '+', or 'baseline' for none."""
    return "+".join(f.label for f in on) or BASELINE


def _uses(on: list[Factor], baseline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A configuration's plugins: the baseline's (those a factor of the same name does not replace), then its
    factors in the recipe's order."""
    names = {f.name for f in on}
    return [dict(u) for u in baseline if u["name"] not in names] + [{"name": f.name, "params": f.params} for f in on]


def _forbidden(on: list[Factor], baseline: list[dict[str, Any]], registry: Any, spec: Any) -> str | None:
    """Why a configuration cannot run (None if it can): two values of one optimization, or a rule of its
    plugins (`before` order, `validate` against the other plugins and the workload)."""
    names = [f.name for f in on]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        return f"two values of '{twice}' at once"
    opts = [registry.optimizations[u["name"]](build_params(registry.optimizations[u["name"]].Params, u["params"]))
            for u in _uses(on, baseline)]
    for opt in opts:
        try:
            validate_in_side(opt, spec, opts)
        except ParamError as exc:
            return f"{opt.name}: {exc}"
    return None


# ---- after the processes: pooling, effects, front, best ----


def rounds_of(records: list[dict[str, Any]]) -> list[list[dict[str, float]]]:
    """The block medians of every round of every process: [process][round][configuration label] -> seconds."""
    return [r["recipe_timing"]["rounds"] for r in records]


def analyse(block: dict[str, Any], records: list[dict[str, Any]], min_effect: float, busy: str | None,
            resamples: int = stats.BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """The recipe's results from its processes' records (each with `recipe_timing`, the first with every
    configuration's checks and memory): per configuration its latency, objective, peak memory, validity and
    speedup over the baseline; each main effect and two-factor interaction with interval and verdict; the
    Pareto front and the best configuration within the budget."""
    first = records[0]["recipe_timing"]
    labels = [c["label"] for c in block["configs"]]
    by_label = {c["label"]: c for c in block["configs"]}
    rounds = rounds_of(records)
    objective = _objective(block["objective"], first["configs"])
    configs = {}
    for label in labels:
        measured = first["configs"].get(label)
        if measured is None:
            continue
        samples = [x for r in records for x in r["recipe_timing"]["configs"][label]["latency"]["data"]]
        latency = stats.summarize(samples, measured["latency"].get("iterations", 1))
        scale = measured["latency"]["median"] / latency["median"]
        throughput = {u: v * scale for u, v in measured["throughput"].items()}
        groups = [[rd[BASELINE] / rd[label] for rd in proc if label in rd and BASELINE in rd] for proc in rounds]
        versus = stats.compare_groups(groups, min_effect, busy) if label != BASELINE else None
        failed = [c["name"] for c in measured.get("checks", []) if not c["passed"]]
        configs[label] = {"levels": by_label[label]["levels"], "plugins": by_label[label]["plugins"],
                          "latency": {k: latency[k] for k in ("median", "iqr", "n") if k in latency},
                          "throughput": throughput, "objective": _value(objective, latency, throughput),
                          "peak_bytes": measured["memory"].get("peak_bytes"), "compile_s": measured.get("compile_s"),
                          "checks": measured.get("checks", []), "valid": not failed,
                          "invalid_reason": f"invariant failed: {', '.join(failed)}" if failed else None,
                          "speedup": _brief(versus)}
    effects = factorial.estimate(factorial.Design.from_dict(block["design"]), _blocks_by_levels(rounds, by_label),
                                 min_effect=min_effect, busy=busy, resamples=resamples)
    points = [factorial.Point(config=label, objective=c["objective"], peak_bytes=c["peak_bytes"], valid=c["valid"],
                              reason=c["invalid_reason"]) for label, c in configs.items()]
    budget = block.get("budget_gb")
    front = factorial.pareto_front(points)
    best = factorial.best_within(points, budget * 2**30 if budget else math.inf, rounds,
                                 min_effect=min_effect, busy=busy, baseline=BASELINE)
    return {"factors": block["factors"], "design": block["design"], "skipped": block["skipped"],
            "budget_gb": budget, "objective": objective, "configs": configs, "effects": effects,
            "front": front, "best": best, "rounds": sum(len(p) for p in rounds),
            "process_rounds": [len(p) for p in rounds]}


def _objective(asked: str, configs: dict[str, Any]) -> str:
    """The objective as measured: `asked`, or for 'auto' the baseline's first throughput ('time' without one)."""
    if asked != "auto":
        return asked
    units = list((configs.get(BASELINE) or {}).get("throughput") or {})
    return units[0] if units else "time"


def _value(objective: str, latency: dict[str, Any], throughput: dict[str, float]) -> float | None:
    """A configuration's objective, higher is better: a throughput, or 1 / median step time for 'time'."""
    if objective == "time":
        return 1.0 / latency["median"] if latency.get("median") else None
    return throughput.get(objective)


def _brief(comparison: dict[str, Any] | None) -> dict[str, Any] | None:
    if comparison is None:
        return None
    return {k: comparison.get(k) for k in ("speedup", "ci95", "verdict", "reason", "pairs", "processes")}


def _blocks_by_levels(rounds: list[list[dict[str, float]]], by_label: dict[str, Any]):
    """[process][round][levels tuple] -> block median, what harness.core.factorial.estimate reads."""
    return [[{tuple(by_label[label]["levels"]): t for label, t in rd.items() if label in by_label} for rd in proc]
            for proc in rounds]


def headline(record: dict[str, Any]) -> list[str]:
    """The recipe's summary for the terminal: best within budget against the baseline and the runner-up, every
    main effect, the interactions that are not 'no significant interaction', the front. Ratios as everywhere
    (harness.report.formatting.fmt_ratio)."""
    from harness.report.formatting import fmt_ratio, fmt_speedup

    def with_verdict(comparison: dict[str, Any]) -> str:
        return f"{fmt_speedup(comparison)} {comparison.get('verdict')}" if comparison else "n/a"

    rec = record.get("recipe") or {}
    if not rec.get("configs"):
        return []
    lines = []
    best = rec.get("best") or {}
    budget = f" within {rec['budget_gb']:g} GiB" if rec.get("budget_gb") else ""
    if best.get("config"):
        sp = best.get("vs_baseline") or {}
        ru = best.get("vs_runner_up") or {}
        lines.append(f"best{budget}: {best['config']} ({rec['objective']}), {with_verdict(sp)} over the baseline"
                     + (f"; over the runner-up {best.get('runner_up')}: {with_verdict(ru)}"
                        if best.get("runner_up") else ""))
    else:
        lines.append(f"best{budget}: {best.get('reason') or 'none'}")
    effects = rec.get("effects") or {}
    for what, terms in (("main effect", effects.get("main", [])), ("interaction", effects.get("interactions", []))):
        for term in terms:
            if what == "interaction" and term.get("verdict") == "no significant interaction":
                continue
            shown = (f"{fmt_ratio(term['factor'])}x [{fmt_ratio(term['ci95'][0])}, {fmt_ratio(term['ci95'][1])}] "
                     if term.get("factor") else "")
            lines.append(f"{what} {term['term']}: {shown}{term.get('verdict')}")
    front = rec.get("front") or []
    if front:
        lines.append("front: " + "; ".join(f"{p['config']} {_mib(p.get('peak_bytes'))}" for p in front))
    return lines


def _mib(value: Any) -> str:
    return f"{value / 2**20:.0f} MiB" if isinstance(value, (int, float)) else "memory n/a"
