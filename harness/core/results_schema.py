"""The shape of a results file (docs/results.md) as the readers use it: types, finite positive times, lists.

`check(data)` raises InputError naming the field by its path in the file (``cases[2].baseline.latency.median``)
and what it expected, for the first value a reader could not use: a hand-edited or damaged file is one line and
exit 2 in `harness report`, `export` and `compare`, never a traceback or a "nanx". Keys a reader does not use are
not checked; a key that may be absent is checked only when present. `harness.core.results.validate` calls it, so
every reader goes through it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from harness.core.errors import InputError

Check = Callable[[Any, str], None]

# A time outside these bounds is not a measurement (below a picosecond, above 30 years); within them every ratio of
# two times, and its logarithm, is a finite float.
MIN_TIME_S, MAX_TIME_S = 1e-12, 1e9
MIN_RATIO, MAX_RATIO = 1e-12, 1e12


def shown(value: Any) -> str:
    """A value as the error message quotes it: JSON, cut at 40 characters; objects and lists by kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:39] + "…"


def bad(where: str, expected: str, value: Any) -> InputError:
    """The error for a value that is not what the readers need."""
    return InputError(f"expected {expected}, got {shown(value)}", field=where or "(top level)")


def is_number(x: Any) -> bool:
    """A JSON number that is finite (bool is not a number here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def number(lo: float | None = None, hi: float | None = None, what: str = "a number", null: bool = True,
           integer: bool = False) -> Check:
    """A finite number (an integer with `integer`) within [lo, hi]; None when `null`."""
    def check(x: Any, where: str) -> None:
        if x is None and null:
            return
        if not is_number(x) or (integer and not isinstance(x, int)) or (lo is not None and x < lo) or \
                (hi is not None and x > hi):
            raise bad(where, what, x)
    return check


def text(null: bool = True) -> Check:
    """A string; None when `null`."""
    def check(x: Any, where: str) -> None:
        if not (isinstance(x, str) or (x is None and null)):
            raise bad(where, "a string", x)
    return check


def boolean(x: Any, where: str) -> None:
    """true, false or null."""
    if x is not None and not isinstance(x, bool):
        raise bad(where, "true or false", x)


def anything(x: Any, where: str) -> None:
    """Any value (shown as text where shown)."""


def list_of(item: Check, null: bool = True, size: int | None = None) -> Check:
    """A list (of exactly `size` items when given) whose items pass `item`; None when `null`."""
    what = "a list" if size is None else f"a list of {size}"

    def check(x: Any, where: str) -> None:
        if x is None and null:
            return
        if not isinstance(x, list) or (size is not None and len(x) != size):
            raise bad(where, what, x)
        for i, v in enumerate(x):
            item(v, f"{where}[{i}]")
    return check


def map_of(item: Check, null: bool = True) -> Check:
    """An object whose values pass `item`; None when `null`."""
    def check(x: Any, where: str) -> None:
        if x is None and null:
            return
        if not isinstance(x, dict):
            raise bad(where, "an object", x)
        for k, v in x.items():
            item(v, f"{where}.{k}")
    return check


def record(fields: dict[str, Check], required: tuple[str, ...] = (), null: bool = True) -> Check:
    """An object: the keys in `required` present, each key of `fields` that is present passing its check."""
    def check(x: Any, where: str) -> None:
        if x is None and null:
            return
        if not isinstance(x, dict):
            raise bad(where, "an object", x)
        for key in required:
            if key not in x:
                raise InputError("missing", field=f"{where}.{key}" if where else key)
        for key, sub in fields.items():
            if key in x:
                sub(x[key], f"{where}.{key}" if where else key)
    return check


def device(x: Any, where: str) -> None:
    """A device name as the readers parse it: "cpu", "cuda", "cuda:N" (N digits), any other string; or null."""
    if x is None:
        return
    index = x.partition(":")[2] if isinstance(x, str) and x.startswith("cuda") else ""
    if not isinstance(x, str) or (index and not re.fullmatch(r"[0-9]+", index)):
        raise bad(where, 'a device name ("cpu", "cuda", "cuda:0")', x)


def nullable(inner: Check) -> Check:
    """`inner`, or None."""
    def check(x: Any, where: str) -> None:
        if x is not None:
            inner(x, where)
    return check


def one_of(*checks: Check, what: str) -> Check:
    """A value that passes one of `checks`."""
    def check(x: Any, where: str) -> None:
        for c in checks:
            try:
                c(x, where)
                return
            except InputError:
                continue
        raise bad(where, what, x)
    return check


TIME = number(MIN_TIME_S, MAX_TIME_S, f"a time in seconds (> 0, at most {MAX_TIME_S:g})")
SAMPLE = number(MIN_TIME_S, MAX_TIME_S, f"a time in seconds (> 0, at most {MAX_TIME_S:g})", null=False)
SPREAD = number(0, MAX_TIME_S, "a time spread in seconds (>= 0)")
RATIO = number(MIN_RATIO, MAX_RATIO, "a ratio (> 0)")
# the items of a list of figures are never null: a reader computes with each one (a median, a sum, a bound)
RATIOS = list_of(number(MIN_RATIO, MAX_RATIO, "a ratio (> 0)", null=False))
COUNT = number(0, integer=True, what="a whole number >= 0")
COUNTS = list_of(number(0, integer=True, what="a whole number >= 0", null=False))
AMOUNT = number(0, what="a number >= 0")
RANGE = list_of(number(0, what="a number >= 0", null=False), size=2)
STRINGS = list_of(text(null=False))
PAIR = list_of(number(MIN_RATIO, MAX_RATIO, "a ratio (> 0)", null=False), size=2)
SCALAR = one_of(number(), text(), boolean, what="a number, a string, true or false")

LATENCY = record({
    "median": TIME, "mean": TIME, "min": TIME, "max": TIME, "q1": TIME, "q3": TIME, "p90": TIME, "p99": TIME,
    "stddev": SPREAD, "iqr": SPREAD, "cv": AMOUNT, "rounds": COUNT, "iterations": number(1, what="a number >= 1"),
    "outliers": text(), "data": list_of(SAMPLE), "blocks": list_of(number(1, integer=True, what="a whole number >= 1",
                                                                       null=False)),
    "process_blocks": COUNTS,
}, required=("median",), null=False)

MEMORY = record({"peak_bytes": AMOUNT, "reserved_bytes": AMOUNT, "source": text(), "breakdown": map_of(number())})
ENERGY = record({"joules_per_step": AMOUNT, "avg_power_w": AMOUNT, "window_s": AMOUNT, "source": text()})

SIDE = record({
    "latency": LATENCY, "throughput": map_of(AMOUNT), "memory": MEMORY, "energy": ENERGY,
    "compile_s": number(0, what="a time in seconds (>= 0)"), "info": map_of(anything),
    "extra": record({"too_few_requests": STRINGS}),  # any metric by name; these the readers iterate
    "threads": COUNT, "distributed": boolean,
}, required=("latency",))

COMPARISON = record({
    "speedup": RATIO, "ci95": PAIR, "verdict": text(), "reason": text(), "pairs": COUNT, "processes": COUNT,
    "per_pair": RATIOS, "per_round": RATIOS, "process_pairs": COUNTS,
    "min_effect": number(0, 10, "a fraction between 0 and 10"), "equivalence": PAIR, "memory_ratio": AMOUNT,
    "variance": record({"within_cv": AMOUNT, "between_cv": AMOUNT, "df": AMOUNT, "processes": COUNT,
                        "pairs": COUNT}),
})

FOREIGN_LOAD = record({
    "foreign_cpu": number(), "steal": number(), "per_pair": list_of(number()), "loadavg_1m": number(),
    "cores": COUNT, "threshold": number(), "busy": boolean, "reason": text(), "advice": text(),
})

MEASUREMENT = record({
    "timer": text(), "design": text(), "pairs": COUNT, "rounds": COUNT, "stopped_by": text(),
    "order": one_of(text(), STRINGS, what="a string or a list of strings"), "block_samples": map_of(COUNT),
    "processes_repeated": number(1, integer=True, what="a whole number >= 1"), "foreign_load": FOREIGN_LOAD,
    "warmup_s": one_of(AMOUNT, map_of(AMOUNT), what="a time in seconds or one per side"),
    "num_threads": COUNT, "processes": COUNT, "phases_s": map_of(number()), "l2_flush": SCALAR,
})

PLUGIN = record({"name": text(null=False), "params": map_of(anything)}, required=("name",), null=False)
CHECK = record({"name": text(null=False), "passed": boolean, "values": anything, "tolerance": anything},
               required=("name", "passed"), null=False)
REPEAT = record({"speedup": RATIO, "ci95": PAIR, "verdict": text(), "pairs": COUNT, "foreign_cpu": number(),
                 "duration_s": AMOUNT, "log": text(), "processes": COUNT}, null=False)

PROBE = record({"value": number(MIN_RATIO, what="a number > 0", null=False), "status": text(), "fits": boolean,
                "peak_bytes": AMOUNT, "step_s": AMOUNT}, required=("value",), null=False)
SEARCH = record({"largest": AMOUNT, "smallest_failing": AMOUNT, "complete": boolean, "stopped": text(),
                 "elapsed_s": AMOUNT, "at_largest": record({"peak_bytes": AMOUNT, "step_s": AMOUNT}),
                 "probes": list_of(PROBE)}, null=False)
CAPACITY = record({"dim": text(null=False), "budget_bytes": number(1, what="a number of bytes > 0", null=False),
                   "ratio": AMOUNT, "ratio_bound": text(), "throughput_ratio": AMOUNT,
                   "sides": map_of(SEARCH, null=False)}, required=("dim", "budget_bytes", "sides"))

METRICS = record({k: number() for k in ("requests_per_s", "tokens_per_s_total", "goodput_requests_per_s",
                                         "slo_attainment", "requests_served", "foreign_cpu")}, null=False)
POINT = record({"rate": number(), "status": text(null=False), "meets_slo": boolean, "too_few_requests": STRINGS,
                "metrics": METRICS}, required=("status", "metrics", "too_few_requests"), null=False)
RATE_SEARCH = record({"rate": AMOUNT, "failing": AMOUNT, "stopped": text(), "elapsed_s": AMOUNT,
                      "points": list_of(POINT, null=False), "offline": nullable(POINT)},
                     required=("points",), null=False)
SERVING_SIDE = record({"rate": AMOUNT, "rate_range": RANGE, "busy_probes": COUNT, "failing": AMOUNT,
                       "stopped": text(), "elapsed_s": AMOUNT, "offline": nullable(POINT),
                       "searches": list_of(RATE_SEARCH), "points": list_of(POINT)}, null=False)
SERVING = record({
    "slo": map_of(number(MIN_TIME_S, what="a bound in seconds > 0", null=False), null=False),
    "rel_tol": AMOUNT, "rate_ratio": AMOUNT, "rate_ratio_range": RANGE, "ratio_repeats": COUNT,
    "saturation_ratio": AMOUNT, "saturation_ratio_range": RANGE,
    "sides": map_of(SERVING_SIDE, null=False),
    "sweep": record({"rates": list_of(number(0, what="a number >= 0", null=False), null=False),
                     "points": map_of(list_of(POINT, null=False), null=False)}),
}, required=("slo", "sides"))

WORKLOAD = record({"name": text(), "type": text(), "spec": map_of(anything)}, null=False)
CASE = record({
    "id": text(null=False), "status": text(null=False), "kind": text(),
    "workload": WORKLOAD,
    "plugins": list_of(PLUGIN), "baseline_plugins": list_of(PLUGIN), "note": text(), "error": text(),
    "processes": COUNT, "alone": boolean, "duration_s": AMOUNT, "log": text(), "measurement": MEASUREMENT,
    "baseline": SIDE, "optimized": SIDE, "comparison": COMPARISON, "checks": list_of(CHECK),
    "warnings": STRINGS, "repeats": list_of(REPEAT), "capacity": CAPACITY, "serving": SERVING,
}, required=("id", "status"), null=False)

# The environment is shown whole (any keys, any values); these are the ones a reader opens or parses.
ENVIRONMENT = record({
    "hostname": SCALAR, "os": text(), "python": SCALAR, "torch": SCALAR, "device": device,
    "cpu": record({"model": SCALAR, "cores_logical": SCALAR}),
    "cuda": record({"devices": list_of(record({"name": text(null=False)}, required=("name",), null=False)),
                    "cuda_version": SCALAR}),
    "git": record({"commit": SCALAR, "branch": SCALAR, "dirty": SCALAR}),
})

RESULTS = record({
    "run_id": SCALAR, "harness_version": SCALAR, "started": SCALAR, "finished": SCALAR, "status": text(),
    "wall_s": AMOUNT, "imported_from": text(), "warnings": STRINGS,
    "suite": record({"name": SCALAR, "path": text(), "description": text(), "measure": map_of(anything),
                     "device": SCALAR}),
    "environment": ENVIRONMENT, "cases": list_of(CASE, null=False),
}, required=("schema_version", "cases"), null=False)


def first_nonfinite(data: Any, where: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The path (keys and indices) of the first NaN or infinity in `data` (JSON lets Python read them), or None."""
    if isinstance(data, float):
        return None if math.isfinite(data) else where
    if isinstance(data, dict):
        items: Any = data.items()
    elif isinstance(data, list):
        if all(type(x) is float and math.isfinite(x) for x in data):  # a list of samples: the common, long case
            return None
        items = enumerate(data)
    else:
        return None
    for k, v in items:
        found = first_nonfinite(v, (*where, k))
        if found is not None:
            return found
    return None


def dotted(path: tuple[Any, ...]) -> str:
    """('cases', 2, 'baseline') -> 'cases[2].baseline'."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def unique_ids(cases: list[dict[str, Any]]) -> None:
    """Case ids are unique in a run: the readers align runs by id, and a second case of one id would hide."""
    seen: dict[str, int] = {}
    for i, case in enumerate(cases):
        if case["id"] in seen:
            raise InputError(f"duplicate case id {shown(case['id'])} (also cases[{seen[case['id']]}])",
                             field=f"cases[{i}].id")
        seen[case["id"]] = i


def check(data: Any) -> None:
    """Raise InputError (field: the path in the file) for the first value in a results dict that the readers
    cannot use: a non-finite number anywhere, a wrong type, a time that is not positive, a duplicate case id."""
    bad_path = first_nonfinite(data)
    if bad_path is not None:
        raise InputError("expected a finite number, got NaN or Infinity", field=dotted(bad_path) or "(top level)")
    RESULTS(data, "")
    unique_ids(data["cases"])
