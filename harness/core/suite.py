"""Suites: YAML files naming a device, workloads and cases. Loaded with bounded safe_load (`harness.core.yamlsafe`:
no alias bombs, recursion or deep nesting); every error names the file, the line and the field
(`harness.core.errors.InputError`)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from harness.core import yamlsafe
from harness.core.env import MAX_THREADS, device_problem
from harness.core.errors import InputError, suggestion
from harness.core.optimization import ParamError, applies_to, build_params, validate_in_side, yaml_hint
from harness.core.plugins import Registry
from harness.core.searches import CORE_SEARCHES
from harness.core.timing import MAX_REPEAT, MeasureSettings

SUITE_KEYS = ("name", "description", "device", "threads", "measure", "workloads", "cases")
CASE_KEYS = ("workload", "plugins", "baseline", "sweep", "note", "timeout_s", "recipe")  # and the searches' blocks


@dataclass
class PluginUse:
    """One optimization in a case: its name and validated parameters."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseSpec:
    """One case: a workload measured with `baseline` plugins and with `plugins` in paired blocks; `alone`
    (suite: `baseline: none`) times the plugins' side by itself, with no baseline, checks or verdict."""

    id: str
    workload: str
    workload_type: str
    workload_spec: dict[str, Any]
    kind: str
    plugins: list[PluginUse]
    baseline: list[PluginUse]
    processes: int = 1
    note: str = ""
    timeout_s: float | None = None
    line: int | None = None
    alone: bool = False
    # the case's search blocks by key (`capacity:`, a workload's own such as `serving:`), each as its search's
    # `check` returned it (harness.core.searches)
    searches: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the case's `recipe:` block as harness.core.recipe.check returned it (factors, configurations, design), if any
    recipe: dict[str, Any] | None = None

    @property
    def capacity(self) -> dict[str, Any] | None:
        """The case's `capacity:` block (harness.core.capacity.CapacitySpec as a dict), if any."""
        return self.searches.get("capacity")


@dataclass
class Suite:
    name: str
    path: str
    description: str
    device: str
    threads: int | None
    measure: MeasureSettings
    cases: list[CaseSpec]
    overrides: dict[str, Any] = field(default_factory=dict)  # what the command line set (`OVERRIDES`)
    searches: dict[str, type] = field(default_factory=dict)  # the loaded searches by key (harness.core.searches)


def builtin_suite_path(name: str) -> Path:
    """The path of a suite shipped with harness (`quick`, `training`, ...)."""
    return Path(str(resources.files("harness_suites") / f"{name}.yaml"))


def resolve_suite_path(arg: str | None) -> Path:
    """A file path, or the name of a built-in suite; the default is the quick suite."""
    if arg is None:
        return builtin_suite_path("quick")
    path = Path(arg)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in arg:
        return path
    return builtin_suite_path(arg)


class _Doc:
    """Parsed YAML plus the line of every node, addressed by its path of keys and indexes."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.data, node = yamlsafe.load(path, "suite")
        self.lines: dict[tuple, int] = {}
        if node is not None:
            self._walk(node, ())
        self._check_finite(self.data, ())

    def _walk(self, node, path: tuple) -> None:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.lines[path + (key.value,)] = key.start_mark.line + 1
                self._walk(value, path + (key.value,))
                self.lines[path + (key.value,)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def _check_finite(self, value: Any, path: tuple) -> None:
        """Every number of a suite is finite: a setting of .inf or .nan would pass every `x > 0` check and fail
        (or run forever) later; results.json cannot hold either."""
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(path, f"must be a finite number (got {value}); leave the key out for its default")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            self._check_finite(item, path + (key,))

    def error(self, path: tuple, message: str) -> InputError:
        line = None
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                line = self.lines[path[:cut]]
                break
        dotted = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(path))
        return InputError(message, self.path, line, dotted or None)


def _check_keys(doc: _Doc, path: tuple, mapping: Any, allowed: tuple, what: str) -> None:
    if not isinstance(mapping, dict):
        raise doc.error(path, f"{what} must be a mapping (got {type(mapping).__name__})")
    for key in mapping:
        if key not in allowed:
            raise doc.error(path + (key,), f"unknown key '{key}'{suggestion(key, allowed, 'allowed')}")


MAX_CASES = 10_000  # cases of a suite after sweeps: a sweep's product grows fast
OVERRIDES = ("model", "budget_gb", "device", "threads", "repeat", "until_conclusive")  # what a command line may set


def load_suite(path: str | Path, registry: Registry, model: str | None = None,
               budget_gb: float | None = None, overrides: dict[str, Any] | None = None) -> Suite:
    """Read and validate a suite; raises InputError naming file, line and field. `overrides`: what the command
    line sets (`OVERRIDES`), applied here once and kept in `Suite.overrides` (a re-run command repeats them):
    `model` replaces the model of every workload that has one (`harness run --model hf:DIR`), `budget_gb` the
    budget of every capacity search (`--budget-gb`), both validated as if the suite said so; `device`,
    `threads`, and the measure settings `repeat` and `until_conclusive`. `model` / `budget_gb` as arguments:
    the same as in `overrides`."""
    given = {**(overrides or {}), **({"model": model} if model else {}),
             **({"budget_gb": budget_gb} if budget_gb is not None else {})}
    overrides = {k: v for k, v in given.items() if v is not None and v is not False}
    _check_overrides(overrides)
    model, budget_gb = overrides.get("model"), overrides.get("budget_gb")
    doc = _Doc(Path(path))
    data = doc.data
    if data is None:
        raise doc.error((), "the suite is empty")
    _check_keys(doc, (), data, SUITE_KEYS, "a suite")
    for key in ("name", "workloads", "cases"):
        if key not in data:
            raise doc.error((), f"missing required key '{key}'")
    measure = _measure(doc, data.get("measure") or {})
    name = _text(doc, ("name",), data["name"], required=True)
    description = _text(doc, ("description",), data.get("description"))
    threads = data.get("threads", "auto")
    if threads != "auto" and (not isinstance(threads, int) or isinstance(threads, bool)
                              or not 0 < threads <= MAX_THREADS):
        raise doc.error(("threads",), f"must be 'auto' or a positive integer up to {MAX_THREADS:,} (got {threads!r})"
                                      f"{yaml_hint(threads, int)}")
    device = data.get("device", "auto")
    if device_problem(device):
        raise doc.error(("device",), device_problem(device))
    workloads = _workloads(doc, data["workloads"], registry, model)
    if not isinstance(data["cases"], list) or not data["cases"]:
        raise doc.error(("cases",), "must be a non-empty list of cases")
    cases: list[CaseSpec] = []
    seen: dict[str, int | None] = {}
    for i, case in enumerate(data["cases"]):
        for block in ("capacity", "recipe"):  # --budget-gb: the budget of every capacity search and recipe
            if budget_gb is not None and isinstance(case, dict) and isinstance(case.get(block), dict):
                case = {**case, block: {**case[block], "budget_gb": budget_gb}}
        expanded = _cases(doc, ("cases", i), case, workloads, registry, MAX_CASES - len(cases))
        _check_unique(doc, ("cases", i), expanded, seen)
        cases.extend(expanded)
    if budget_gb is not None and not any(c.capacity or c.recipe for c in cases):
        raise InputError("--budget-gb sets the budget of capacity: blocks and recipes, and this suite has neither",
                         str(path))
    suite = Suite(name=name, path=str(path), description=description,
                  device=device, threads=None if threads == "auto" else threads, measure=measure, cases=cases,
                  searches=dict(registry.searches))
    apply_overrides(suite, overrides)
    return suite


def _text(doc: _Doc, path: tuple, value: Any, required: bool = False) -> str:
    """A suite's text field: a string (non-empty where `required`); absent or null is "" where it is optional.
    YAML turns unquoted 2024-01-01, 12 or yes into a date, a number or a boolean: those are refused, not
    str()-ed into something else."""
    if value is None and not required:
        return ""
    if isinstance(value, str) and (value.strip() or not required):
        return value
    if isinstance(value, str):
        raise doc.error(path, "must be a non-empty string")
    what = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", bytes: "binary data",
            list: "a list", dict: "a mapping"}.get(type(value), "a date" if isinstance(value, dt.date) else
                                                   type(value).__name__)
    quote = "; write it in quotes" if isinstance(value, (bool, int, float, dt.date)) else ""
    shown = "" if value is None else " " + (repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "...")
    raise doc.error(path, f"must be {'a non-empty' if required else 'a'} string (got {what}{shown}){quote}")


def _check_unique(doc: _Doc, path: tuple, cases: list[CaseSpec], seen: dict[str, int | None]) -> None:
    """Case ids are unique, after sweeps too: the error points at the second case (its sweep for a repeat within
    one sweep) and names the line of the first."""
    for case in cases:
        if case.id in seen:
            where = path + ("sweep",) if seen[case.id] == case.line and path + ("sweep",) in doc.lines else path
            raise doc.error(where, f"two cases have the same id '{case.id}' (lines {seen[case.id]} and "
                                   f"{doc.lines.get(where, case.line)}); give one of them different parameters")
        seen[case.id] = case.line


def _check_overrides(overrides: dict[str, Any]) -> None:
    """The command line's values, whoever passes them (`harness.core.cli` checks them as it parses, too)."""
    for key, most in (("threads", MAX_THREADS), ("repeat", MAX_REPEAT)):
        value = overrides.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most):
            raise InputError(f"must be a positive integer up to {most:,} (got {value!r})", field=f"--{key}")
    budget = overrides.get("budget_gb")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                               or not 0 < budget < math.inf):
        raise InputError(f"must be a positive number of GiB (got {budget!r})", field="--budget-gb")
    if "device" in overrides and device_problem(overrides["device"]):
        raise InputError(device_problem(overrides["device"]), field="--device")


def apply_overrides(suite: Suite, overrides: dict[str, Any]) -> None:
    """Set what the command line overrides (`OVERRIDES`) on a loaded suite and record it in `suite.overrides`."""
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"unknown suite override(s): {', '.join(sorted(unknown))}")
    _check_overrides(overrides)
    suite.device = overrides.get("device", suite.device)
    suite.threads = overrides.get("threads", suite.threads)
    suite.measure.repeat = overrides.get("repeat", suite.measure.repeat)
    suite.measure.until_conclusive = overrides.get("until_conclusive", suite.measure.until_conclusive)
    suite.overrides.update(overrides)


def _measure(doc: _Doc, values: dict) -> MeasureSettings:
    allowed = tuple(f.name for f in dataclasses.fields(MeasureSettings))
    if isinstance(values, dict) and "rounds" in values:
        raise doc.error(("measure", "rounds"), "'rounds' is gone: cases are timed in pairs of short blocks in a "
                                               "random order; set 'min_pairs' (default 10) and 'block_s' instead")
    _check_keys(doc, ("measure",), values, allowed, "measure")
    values = {key: _percent(value) if key in FRACTIONS else value for key, value in values.items()}
    try:
        settings = build_params(MeasureSettings, values)
    except ParamError as exc:
        raise doc.error(("measure", exc.field) if exc.field else ("measure",), str(exc)) from None
    return settings


FRACTIONS = ("min_effect", "busy_threshold")  # measure settings that also take a percent: "5%" = 0.05


def _percent(value: Any) -> Any:
    """0.05 for "5%" or "5 %"; any other value as it is (the settings' own checks judge it)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / 100
        except ValueError:
            return value
    return value


def _workloads(doc: _Doc, workloads: Any, registry: Registry, model: str | None) -> dict[str, tuple[str, dict, str]]:
    if not isinstance(workloads, dict) or not workloads:
        raise doc.error(("workloads",), "must be a mapping of workload names to settings")
    out = {}
    for name, values in workloads.items():
        path = ("workloads", str(name))
        _text(doc, path, name, required=True)
        if not isinstance(values, dict) or "type" not in values:
            raise doc.error(path, "needs a 'type' (a registered workload: "
                                  f"{', '.join(registry.workloads) or 'none loaded'})")
        values = dict(values)
        wtype = values.pop("type")
        if wtype not in registry.workloads:
            raise doc.error(path + ("type",), _unknown("workload type", wtype, registry.workloads, registry))
        cls = registry.workloads[wtype]
        if model is not None and "model" in {f.name for f in dataclasses.fields(cls.Spec)}:
            values["model"] = model
        try:
            spec = build_params(cls.Spec, values)
        except ParamError as exc:
            raise doc.error(path + (exc.field,) if exc.field else path, str(exc)) from None
        out[name] = (wtype, dataclasses.asdict(spec), cls.kind)
    return out


def _unknown(what: str, name: Any, known: dict, registry: Registry) -> str:
    message = f"unknown {what} '{name}'{suggestion(name, known)}"
    broken = [f"{k} ({v})" for k, v in registry.errors.items() if str(name) in k]
    if broken:
        message += f". A plugin with that name failed to load: {'; '.join(broken)}"
    return message


def _plugin_list(doc: _Doc, path: tuple, items: Any, registry: Registry) -> list[PluginUse]:
    if items is None:
        return []
    if not isinstance(items, list):
        items = [items]
    uses = []
    for j, item in enumerate(items):
        ipath = path + (j,)
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, params = next(iter(item.items()))
            params = params or {}
            ipath = ipath + (name,)
        else:
            raise doc.error(ipath, "a plugin is a name or a one-key mapping {name: {param: value}}")
        if name not in registry.optimizations:
            raise doc.error(ipath, _unknown("plugin", name, registry.optimizations, registry))
        if not isinstance(params, dict):
            raise doc.error(ipath, f"parameters of '{name}' must be a mapping (got {params!r})")
        uses.append(PluginUse(name, params))
    return uses


def _cases(doc: _Doc, path: tuple, case: Any, workloads: dict, registry: Registry, room: int) -> list[CaseSpec]:
    """The cases of one suite entry, one per combination of its sweep's values (at most `room` of them)."""
    _check_keys(doc, path, case, CASE_KEYS + tuple(registry.searches), "a case")
    if "workload" not in case:
        raise doc.error(path, "missing required key 'workload'")
    wname = case["workload"]
    if not isinstance(wname, str):
        _text(doc, path + ("workload",), wname, required=True)
    if wname not in workloads:
        raise doc.error(path + ("workload",), _unknown("workload", wname, workloads, registry))
    wtype, wspec, kind = workloads[wname]
    if "recipe" in case:
        return [_recipe_case(doc, path, case, wname, wtype, wspec, kind, registry)]
    plugins = _plugin_list(doc, path + ("plugins",), case.get("plugins"), registry)
    alone = case.get("baseline") == "none"
    baseline = [] if alone else _plugin_list(doc, path + ("baseline",), case.get("baseline"), registry)
    if not plugins:
        raise doc.error(path + ("plugins",), "a case needs at least one plugin")
    sweep = case.get("sweep") or {}
    if not isinstance(sweep, dict):
        raise doc.error(path + ("sweep",), "must be a mapping {plugin.param: [values]}")
    axes = []
    for key, values in sweep.items():
        plugin, _, param = str(key).partition(".")
        if plugin not in [p.name for p in plugins] + ["workload"] or not param:
            raise doc.error(path + ("sweep", key), f"'{key}' must be PLUGIN.PARAM with PLUGIN one of this case's "
                                                   f"plugins ({', '.join(p.name for p in plugins)}), or "
                                                   "workload.FIELD")
        if not isinstance(values, list) or not values:
            raise doc.error(path + ("sweep", key), "must be a non-empty list of values")
        axes.append([(plugin, param, v) for v in values])
    if math.prod(len(axis) for axis in axes) > room:
        raise doc.error(path + ("sweep",), f"makes {math.prod(len(axis) for axis in axes):,} cases, and a suite "
                                           f"holds at most {MAX_CASES:,}")
    out = []
    for combo in itertools.product(*axes) if axes else [()]:
        uses = [PluginUse(p.name, dict(p.params)) for p in plugins]
        base_uses = [PluginUse(p.name, dict(p.params)) for p in baseline]
        spec = {**wspec, **{param: value for plugin, param, value in combo if plugin == "workload"}}
        for plugin, param, value in combo:
            # the swept value also goes to the baseline's entry of that plugin, so both sides do the same work
            for use in uses + base_uses:
                if use.name == plugin:
                    use.params[param] = value
        out.append(_case(doc, path, case, wname, wtype, spec, kind, uses, base_uses, registry))
        swept = ",".join(f"{param}={value}" for plugin, param, value in combo if plugin == "workload")
        out[-1].id = out[-1].id.replace(f"{wname}/", f"{wname}({swept})/", 1) if swept else out[-1].id
        out[-1].alone = alone
    return out


def _check_sides(doc: _Doc, path: tuple, sides: dict[str, list], processes: int, alone: bool) -> None:
    """Rules across a case's plugins: each listed once per side; every plugin with a world_size asks for the
    case's process count; an optimization whose `baseline_needs` is set finds itself on the baseline side."""
    for key, opts in sides.items():
        names = [o.name for o in opts]
        for j, opt in enumerate(opts):
            ppath = path + (key, j, opt.name)
            if names.count(opt.name) > 1:
                raise doc.error(ppath, f"'{opt.name}' is listed twice on this side; give it once, with all its "
                                       "parameters")
            world = getattr(opt.params, "world_size", None)
            if world is not None and world != processes:
                raise doc.error(ppath, f"'{opt.name}' has world_size {world} but the case runs {processes} "
                                       "processes (another plugin of the case asks for that): give every "
                                       "distributed plugin of the case, baseline included, the same world_size")
            if key == "plugins" and opt.baseline_needs and not alone \
                    and opt.name not in [b.name for b in sides["baseline"]]:
                raise doc.error(ppath, opt.baseline_needs)


def _case(doc, path, case, wname, wtype, wspec, kind, uses, baseline, registry) -> CaseSpec:
    labels, processes = [], 1
    try:
        spec = build_params(registry.workloads[wtype].Spec, wspec)
    except ParamError as exc:  # a swept workload field's value (the workload's own were checked on load)
        raise doc.error(path + ("sweep", f"workload.{exc.field}"), str(exc)) from None
    built_opts: dict[str, list] = {}
    for key, group in (("plugins", uses), ("baseline", baseline)):
        built = []
        for j, use in enumerate(group):
            cls = registry.optimizations[use.name]
            ppath = path + (key, j, use.name)
            elsewhere = applies_to(cls, registry.workloads[wtype], wname)
            if elsewhere:
                raise doc.error(ppath, f"'{use.name}' applies to {elsewhere}")
            try:
                params = build_params(cls.Params, use.params)
            except ParamError as exc:
                raise doc.error(ppath + ((exc.field,) if exc.field else ()), str(exc)) from None
            use.params = dataclasses.asdict(params)
            opt = cls(params)
            built.append((ppath, opt))
            processes = max(processes, opt.processes())
            if key == "plugins":
                labels.append(opt.label())
        for ppath, opt in built:
            try:
                validate_in_side(opt, spec, [o for _, o in built])
            except ParamError as exc:
                raise doc.error(ppath + ((exc.field,) if exc.field else ()), str(exc)) from None
        built_opts[key] = [o for _, o in built]
    _check_sides(doc, path, built_opts, processes, alone=case.get("baseline") == "none")
    searches = _searches(doc, path, case, registry, wname, wtype, wspec, built_opts)
    timeout = case.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise doc.error(path + ("timeout_s",), f"must be a positive number of seconds (got {timeout!r})"
                                               f"{yaml_hint(timeout, float)}")
    base = f" vs {'+'.join(b.name for b in baseline)}" if baseline else (" alone" if case.get("baseline") == "none"
                                                                        else "")
    return CaseSpec(id=f"{wname}/{'+'.join(labels)}{base}", workload=wname, workload_type=wtype,
                    workload_spec=wspec, kind=kind, plugins=uses, baseline=baseline, processes=processes,
                    note=_text(doc, path + ("note",), case.get("note")), timeout_s=timeout, line=doc.lines.get(path),
                    searches=searches)


def _recipe_case(doc: _Doc, path: tuple, case: dict, wname: str, wtype: str, wspec: dict, kind: str,
                 registry: Registry) -> CaseSpec:
    """A case with a `recipe:` block (harness.core.recipe): every configuration of its optimizations, one case."""
    from harness.core import recipe

    for key in ("plugins", "sweep", *registry.searches):
        if key in case:
            raise doc.error(path + (key,), f"a recipe case names its optimizations in recipe.optimizations; '{key}' "
                                           "does not go with it")
    if case.get("baseline") == "none":
        raise doc.error(path + ("baseline",), "a recipe compares every configuration with its baseline; "
                                              "'baseline: none' does not go with it")
    baseline = _plugin_list(doc, path + ("baseline",), case.get("baseline"), registry)
    probe = _case(doc, path, {**case, "plugins": None}, wname, wtype, wspec, kind, baseline or [], baseline,
                  registry) if baseline else None
    try:
        block = recipe.check(case["recipe"], registry, registry.workloads[wtype], wname, wspec,
                             [dataclasses.asdict(u) for u in (probe.baseline if probe else [])])
    except ParamError as exc:
        raise doc.error(path + ("recipe", *[int(p) if p.isdigit() else p for p in exc.field.split(".") if p]),
                        str(exc)) from None
    if not block["configs"][1:]:
        raise doc.error(path + ("recipe",), "every configuration but the baseline is forbidden by its plugins' "
                                            "rules: " + "; ".join(f"{s['label']}: {s['reason']}"
                                                                  for s in block["skipped"][:3]))
    timeout = case.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise doc.error(path + ("timeout_s",), f"must be a positive number of seconds (got {timeout!r})")
    factors = [PluginUse(f["name"], f["params"]) for f in block["factors"]]
    base = f" vs {'+'.join(b.name for b in baseline)}" if baseline else ""
    return CaseSpec(id=f"{wname}/recipe({'+'.join(f['label'] for f in block['factors'])}){base}", workload=wname,
                    workload_type=wtype, workload_spec=wspec, kind=kind, plugins=factors,
                    baseline=probe.baseline if probe else [], note=_text(doc, path + ("note",), case.get("note")),
                    timeout_s=timeout, line=doc.lines.get(path), recipe=block)


def _searches(doc: _Doc, path: tuple, case: dict, registry: Registry, wname: str, wtype: str, wspec: dict,
              sides: dict[str, list]) -> dict[str, dict[str, Any]]:
    """The case's search blocks, each checked by its search (harness.core.searches.Search.check) against the
    workload and both sides; a block the case's workload does not offer is an error naming those it does."""
    workload = registry.workloads[wtype]
    offered = {s.key: s for s in CORE_SEARCHES + tuple(getattr(workload, "searches", ()))}
    out = {}
    for key in registry.searches:
        raw = case.get(key)
        if raw is None:
            continue
        bpath = path + (key,)
        if key not in offered:
            owners = [n for n, w in registry.workloads.items() if key in {s.key for s in getattr(w, "searches", ())}]
            raise doc.error(bpath, f"a {key} search is offered by {' / '.join(owners)} workloads; '{wname}' is type: "
                                   f"{wtype}, which offers {', '.join(offered)}")
        search = offered[key]
        _check_keys(doc, bpath, raw, tuple(f.name for f in dataclasses.fields(search.Spec) if f.name != "step"), key)
        try:
            out[key] = search.check(raw, workload.Spec, wspec, sides)
        except ParamError as exc:
            raise doc.error(bpath + ((exc.field.split(".")[0],) if exc.field else ()), str(exc)) from None
    return out
