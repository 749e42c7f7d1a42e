"""The plugin contract: an `Optimization` applies one technique to a workload run and checks its invariant."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from harness.core.errors import suggestion

KINDS = ("training", "inference")  # what a workload is, for listings and results


class ParamError(ValueError):
    """A parameter value is wrong; `field` names it (dotted) so the suite loader can point at its line."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass
class NoParams:
    """Parameters of an optimization that takes none."""


@dataclass
class Check:
    """One invariant: its name, whether it held, the values compared and the tolerance used."""

    name: str
    passed: bool
    values: dict[str, Any] = field(default_factory=dict)
    tolerance: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Optimization:
    """One optimization. Subclass it, set the class attributes, implement `apply` and `check`.

    `apply(run)` changes a freshly built workload run (a `TrainRun`, `GenerateRun` or `ServeRun`) in place: set
    its knobs, wrap the model, rebuild the optimizer, add a context. `check(baseline, optimized)`
    compares the outputs of the baseline run and of this run (same seed) and returns the invariant's checks.
    """

    name: ClassVar[str] = ""
    # The interface (a typing.Protocol of harness.api: TrainAPI, GenerateAPI, ServeAPI, or a plugin's own) a
    # workload's run must implement for this optimization to apply to it; `harness validate` refuses it
    # elsewhere. None: any run (only the `Run` base is touched).
    requires: ClassVar[type | None] = None
    kind: ClassVar[str] = ""  # "training" / "inference": from `requires` (set at class creation), for listings
    # deprecated (one release): the workload types it applies to, when `requires` is not set
    workloads: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    # When set: the baseline side must apply this optimization too (with its own parameters), because the
    # optimization changes the work itself (a batch of prompts); the text says how, as validate's error.
    baseline_needs: ClassVar[str | None] = None
    # optimizations this one must be listed before on a side: it changes the model or optimizer they wrap or
    # rebuild (checked by the suite loader: file:line, exit 2, before any case runs)
    before: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.requires is not None:
            if not (isinstance(cls.requires, type) and getattr(cls.requires, "_is_protocol", False)):
                raise TypeError(f"{cls.__qualname__}.requires must be one typing.Protocol class (TrainAPI, "
                                f"GenerateAPI, ServeAPI, VisionAPI, LMTrainAPI or your own), not {cls.requires!r}")
            if "kind" not in cls.__dict__:
                cls.kind = getattr(cls.requires, "workload_kind", "")  # "" for a protocol of any workload
        elif cls.__dict__.get("kind"):
            warnings.warn(f"{cls.__qualname__}: kind + workloads is deprecated; declare requires = TrainAPI / "
                          "GenerateAPI / ... (harness.api)", DeprecationWarning, stacklevel=2)

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    def processes(self) -> int:
        """How many processes (torchrun ranks) this optimization needs; >1 launches the case under torchrun."""
        return 1

    def supports(self, env: dict[str, Any]) -> str | None:
        """None if it can run on this environment (see `harness.core.env`), else the reason why not."""
        return None

    def validate(self, spec: Any, plugins: list[Optimization]) -> None:
        """Check what follows from the suite alone, before any case runs: this optimization's parameters against
        the workload's `spec` (`harness.models.reference.model_facts(spec.model)` reads a model's context and vocabulary
        without loading it) and against `plugins`, every optimization of the same side in the order applied
        (this one included). Raise ParamError(field, message): `harness validate` and `harness run` report it
        as file:line: field: message and exit 2. The worker calls it too, before `apply`, so `apply` need not
        repeat these checks."""

    def apply(self, run: Any) -> None:
        raise NotImplementedError(f"{type(self).__name__}.apply")

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        """The invariant this optimization must keep, from both runs' `outputs()`."""
        return []

    def label(self) -> str:
        """Name plus the parameters that differ from their defaults, e.g. ``mixed_precision(dtype=fp16)``."""
        changed = {k: v for k, v in dataclasses.asdict(self.params).items()
                   if v != getattr(self.Params(), k)}
        inner = ",".join(f"{k}={v}" for k, v in changed.items())
        return f"{self.name}({inner})" if inner else self.name


def validate_in_side(opt: Optimization, spec: Any, side: list[Optimization]) -> None:
    """Everything checked of `opt` before a run is built: listed before the optimizations it names in `before`,
    then its own `validate(spec, side)`. The suite loader calls it (file:line, exit 2) and so does
    `Workload.build`, for every path that builds a run. Raises ParamError."""
    late = [o.name for o in side[:side.index(opt)] if o.name in opt.before]
    if late:
        raise ParamError("", f"'{opt.name}' changes what {', '.join(late)} wrap(s): list it before "
                             f"{', '.join(late)} in the case's plugins")
    opt.validate(spec, side)


def interface_members(protocol: type) -> tuple[list[str], list[str]]:
    """(attributes, methods) a `typing.Protocol` asks for: its annotated names and its functions and properties,
    its bases' included, private names and `typing.Protocol`'s own excluded."""
    attributes, methods = [], []
    for base in reversed(protocol.__mro__):
        if base in (object, typing.Generic) or base.__dict__.get("_is_protocol") is not True \
                or base.__name__ == "Protocol":
            continue
        attributes += [n for n in base.__dict__.get("__annotations__", {}) if not n.startswith("_")]
        methods += [n for n, v in base.__dict__.items()
                    if not n.startswith("_") and (callable(v) or isinstance(v, property))]
    return list(dict.fromkeys(attributes)), list(dict.fromkeys(methods))


def describe_interface(protocol: type, inherited: bool = True) -> list[dict[str, str]]:
    """Each member of a `typing.Protocol` with its type (or signature) and what it is (the comment after an
    attribute, a method's docstring's first sentence), read from the source: for `harness plugins --api` and the
    table in docs/plugins.md."""
    import ast
    import inspect
    import textwrap

    rows = []
    for base in reversed(protocol.__mro__) if inherited else (protocol,):
        if base.__dict__.get("_is_protocol") is not True or base.__name__ == "Protocol":
            continue
        source = textwrap.dedent(inspect.getsource(base))
        lines = source.splitlines()
        for node in ast.parse(source).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                comment = lines[node.lineno - 1].partition("#")[2].strip()
                rows.append({"member": node.target.id, "type": ast.unparse(node.annotation), "what": comment})
            elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                args = ast.unparse(node.args).removeprefix("self, ").removeprefix("self")
                doc = " ".join((ast.get_docstring(node) or "").split())
                returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
                rows.append({"member": f"{node.name}({args}){returns}" if not any(
                    isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list) else node.name,
                             "type": "method" if node.args.args[1:] or not node.decorator_list else "property",
                             "what": doc})
    return rows


def interface_table(protocols: list[type]) -> str:
    """The markdown table of what each interface lets an optimization touch: its members (`describe_interface`)
    and its knobs (the dataclass its `knobs` is annotated with: type, default, help). docs/plugins.md holds it,
    checked by a test; `harness plugins --api` prints it."""
    rows = ["| interface | member | type | default | what it is (set by) |", "|---|---|---|---|---|"]
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    for protocol in protocols:
        bases = [b.__name__ for b in protocol.__bases__
                 if b.__dict__.get("_is_protocol") is True and b.__name__ != "Protocol"]
        for base in bases:
            rows.append(f"| {protocol.__name__} | every member of {base} | | | |")
        for row in describe_interface(protocol, inherited=False):
            rows.append(f"| {protocol.__name__} | `{cell(row['member'])}` | `{cell(row['type'])}` | | "
                        f"{cell(row['what'])} |")
        knobs = _hints(protocol).get("knobs") if "knobs" in protocol.__dict__.get("__annotations__", {}) else None
        for f in dataclasses.fields(knobs) if dataclasses.is_dataclass(knobs) else ():
            default = repr(f.default_factory()) if f.default_factory is not dataclasses.MISSING else \
                getattr(f.default, "__name__", None) or repr(f.default)
            rows.append(f"| {protocol.__name__} | `knobs.{f.name}` | `{cell(f.type)}` | `{cell(default)}` | "
                        f"{cell(f.metadata.get('help', ''))} |")
    return "\n".join(rows) + "\n"


def missing_members(run_class: type, protocol: type) -> list[str]:
    """What `run_class` lacks of `protocol`: an attribute neither annotated on the class (or a base) nor defined
    there, or annotated with a class that is not the protocol's (a `ServeKnobs` where `GenerateKnobs` is asked);
    a method not defined, or defined only as the protocol's own stub (a class that names the protocol as a base
    without implementing it)."""
    annotated = {n for base in run_class.__mro__ if base.__dict__.get("_is_protocol") is not True
                 for n in base.__dict__.get("__annotations__", {})}  # a protocol named as a base implements nothing
    attributes, methods = interface_members(protocol)
    missing = [n for n in attributes if n not in annotated and not hasattr(run_class, n)]
    asked, have = _hints(protocol), _hints(run_class)
    for name in attributes:
        want, got = asked.get(name), have.get(name)
        if isinstance(want, type) and isinstance(got, type) and not issubclass(got, want):
            missing.append(f"{name}: {want.__name__} (has {got.__name__})")
    for name in methods:
        if name in annotated and isinstance(getattr(protocol, name, None), property):
            continue  # a property the run holds as a plain attribute
        owner = next((b for b in run_class.__mro__ if name in b.__dict__), None)
        if owner is None or owner.__dict__.get("_is_protocol") is True:
            missing.append(f"{name}()")
    return missing


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve here: names are still checked
        return {}


def applies_to(cls: type[Optimization], workload_cls: Any, label: str = "") -> str | None:
    """None if optimization class `cls` applies to workload class `workload_cls` (its run class implements
    `cls.requires`), else the end of a sentence "'NAME' applies to ...", e.g. "GenerateAPI runs, but 'toy'
    (type: toy) runs ToyRun, which lacks prompts, held_out()". `label`: the suite's name for the workload.
    An optimization of the older style (`kind` + `workloads`, no `requires`) applies to the workloads of its
    kind (those named)."""
    where = f"'{label or workload_cls.name}' (type: {workload_cls.name})"
    if cls.requires is None:
        if not cls.kind or (cls.kind == workload_cls.kind
                            and (not cls.workloads or workload_cls.name in cls.workloads)):
            return None
        if cls.kind != workload_cls.kind:
            return f"{cls.kind} workloads, but {where} is a {workload_cls.kind or 'untyped'} workload"
        return f"{' / '.join(cls.workloads)} workloads, but {where} is not among them"
    run_class = getattr(workload_cls, "run_class", None)
    api = cls.requires.__name__
    if run_class is None:
        return f"{api} runs, but {where} names no run_class to check"
    missing = missing_members(run_class, cls.requires)
    if not missing:
        return None
    lacks = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    return f"{api} runs, but {where} runs {run_class.__name__}, which lacks {lacks}"


def describe_params(params_cls: type) -> list[dict[str, Any]]:
    """Each parameter's name, type, default, whether it is required, and help text, for `harness plugins`. A
    `default_factory` is called for its real default (a list, say); a parameter with no default is required
    and its default is None."""
    hints = typing.get_type_hints(params_cls)
    out = []
    for f in dataclasses.fields(params_cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append({"name": f.name, "type": type_name(hints[f.name]), "default": default, "required": required,
                    "help": f.metadata.get("help", "")})
    return out


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def build_params(params_cls: type, values: dict[str, Any] | None) -> Any:
    """Make a Params dataclass from suite values, checking names and types; raises `ParamError`."""
    values = dict(values or {})
    hints = typing.get_type_hints(params_cls)
    known = [f.name for f in dataclasses.fields(params_cls)]
    for key in values:
        if key not in known:
            hint = getattr(params_cls, "unknown_hint", "")  # where such settings live instead, if elsewhere
            raise ParamError(str(key), f"unknown parameter '{key}'{suggestion(key, known)}{hint}")
    for key, value in values.items():
        values[key] = coerce(key, value, hints[key])
    for f in dataclasses.fields(params_cls):
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ParamError(f.name, f"'{f.name}' is required ({f.metadata.get('help') or 'no default'})")
    try:
        return params_cls(**values)
    except ParamError:
        raise
    except (ValueError, TypeError) as exc:
        raise ParamError("", str(exc)) from None


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp` (int, float, bool, str, Literal, X | None, list, dict)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ParamError(key, f"must be one of {', '.join(map(repr, choices))} (got {value!r})")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return coerce(key, value, option)
            except ParamError as exc:
                errors.append(str(exc))
        raise ParamError(key, errors[0] if errors else f"must be null (got {value!r})")
    if origin is list:
        if not isinstance(value, list):
            raise ParamError(key, f"must be a list (got {type(value).__name__} {value!r})")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [coerce(key, v, item_tp) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamError(key, f"must be a mapping (got {type(value).__name__} {value!r})")
        _, item_tp = typing.get_args(tp) or (Any, Any)
        return {k: coerce(f"{key}.{k}", v, item_tp) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ParamError(key, f"must be {type_name(tp)} (got {type(value).__name__} {value!r}){yaml_hint(value, tp)}")
    return value


_EXPONENT = re.compile(r"([-+]?)(\d*)(\.?)(\d*)[eE]([-+]?)(\d+)")


def yaml_hint(value: Any, tp: Any) -> str:
    """Why YAML gave `value` the wrong type, where that is YAML 1.1's doing: a number with an exponent but no '.'
    or no exponent sign (1e300, 1.5e3) is text to PyYAML; a date or number where text was meant needs quotes."""
    match = _EXPONENT.fullmatch(value.strip()) if isinstance(value, str) and tp in (int, float) else None
    if match and (match[2] or match[4]):
        sign, whole, _, frac, esign, exp = match.groups()
        number = f"{sign}{whole or '0'}.{frac or '0'}e{esign or '+'}{exp}"
        return (f"; write {number} (YAML 1.1, which suites are read with, takes {value.strip()} as text: a number "
                "with an exponent needs a '.' and a signed exponent)" if tp is float
                else f"; write it in digits (YAML 1.1 takes {value.strip()} as text)")
    if tp is str and isinstance(value, (int, float, bool, dt.date)):
        return "; write it in quotes"
    return ""
