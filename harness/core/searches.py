"""Searches a case can ask for beyond its paired comparison, each a block of the case named by its `key`:
`capacity:` (harness.core.capacity, on any workload with an integer field) and those a workload declares in
its `searches` (the serve workload's `serving:`). Each probe is one side at one value in a fresh process:
`probe(case, probe)` is the runner's `run_case` with the suite's settings bound; in that process the worker
calls the search's `measure`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, ClassVar

from harness.core import capacity
from harness.core.optimization import ParamError, build_params, validate_in_side

Probe = Callable[[Any, dict[str, Any]], dict[str, Any]]  # (case at the probed value, probe) -> the process's record


class Search:
    """A search beside a case's paired comparison: a `key:` block of the case, its settings `Spec`, the search
    the runner drives (`run`), one probe in a fresh process (`measure`) and the one-line summary (`headline`).
    Subclass it and name it in a workload's `searches` (or, for every workload, in `CORE_SEARCHES`)."""

    key: ClassVar[str] = ""
    Spec: ClassVar[type]

    def __init__(self, block: dict[str, Any]):
        self.block = block  # the case's block as `check` returned it

    @classmethod
    def check(cls, raw: dict[str, Any], spec_cls: type, wspec: dict[str, Any], sides: dict[str, list]) -> dict:
        """The case's block checked at suite load, against the workload's settings (`spec_cls` built from
        `wspec`) and both sides' optimizations; returns it as stored (defaults filled, values resolved). Raises
        ParamError(field, message)."""
        return dataclasses.asdict(build_params(cls.Spec, raw))

    def announce(self) -> str:
        """What the runner prints as the search starts."""
        return f"{self.key} search, each side"

    def run(self, case: Any, probe: Probe) -> dict[str, Any]:
        """The search over both sides (each probe a fresh process); its record goes in results.json[key]."""
        raise NotImplementedError

    def measure(self, workload: Any, spec: Any, opts: list, ctx: Any, dist: Any, probe: dict[str, Any],
                job: dict[str, Any]) -> dict[str, Any]:
        """One probe, in its own process: the side's run built at the probed value (`spec`) with that side's
        optimizations; `dist` the worker's harness.core.distributed.Distributed, `job` its job file. Returns the
        process's record, {"status": "ok", "probe": {...}}."""
        raise NotImplementedError

    @staticmethod
    def headline(record: dict[str, Any] | None) -> str:
        """The search's one-line summary, for the terminal."""
        return ""


def probe_result(record: dict[str, Any]) -> dict[str, Any]:
    """A probe's figures with its status (ok, oom, failed, timeout, crashed) and error, if any."""
    return {"status": record["status"], **(record.get("probe") or {}),
            **({"error": record["error"]} if record.get("error") else {})}


class CapacitySearch(Search):
    """`capacity:`: the largest value of an integer workload field (batch, say) whose run fits a memory budget,
    both sides (harness.core.capacity), half the time budget per side."""

    key = "capacity"
    Spec = capacity.CapacitySpec

    @classmethod
    def check(cls, raw: dict[str, Any], spec_cls: type, wspec: dict[str, Any], sides: dict[str, list]) -> dict:
        """The block with its step (the smallest value whose first three multiples every side accepts) and its
        limit (the largest accepted multiple) resolved."""
        block = build_params(capacity.CapacitySpec, raw)
        dim = block.dim
        if not isinstance(wspec.get(dim), int) or isinstance(wspec.get(dim), bool):
            fields = [k for k, v in wspec.items() if isinstance(v, int) and not isinstance(v, bool)]
            raise ParamError("dim", f"'{dim}' is not an integer field of the workload; use one of {', '.join(fields)}")

        def accepts(value: int) -> bool:
            try:
                spec = build_params(spec_cls, {**wspec, dim: value})
                for opts in sides.values():
                    for opt in opts:
                        validate_in_side(opt, spec, opts)
            except ParamError:
                return False
            return True

        resolved = capacity.resolve_step(accepts, block.limit)
        if resolved is None:
            raise ParamError("dim", f"no {dim} in 1..192 that both sides accept")
        block.step, block.limit = resolved
        return dataclasses.asdict(block)

    def announce(self) -> str:
        return f"capacity: the largest {self.block['dim']} within {self.block['budget_gb']:g} GiB, each side"

    def run(self, case: Any, probe: Probe) -> dict[str, Any]:
        spec = capacity.CapacitySpec(**self.block)
        sides = {}
        for side in ("baseline", "optimized") if not case.alone else ("optimized",):
            def probe_at(value: int, side=side) -> dict[str, Any]:
                at = dataclasses.replace(case, workload_spec={**case.workload_spec, spec.dim: value})
                return probe_result(probe(at, {"search": self.key, "side": side, "value": value,
                                               "budget_bytes": spec.budget_bytes}))

            sides[side] = capacity.search_side(spec, probe_at, time.monotonic() + spec.max_time_s / 2)
        return capacity.summarize(spec, sides)

    def measure(self, workload: Any, spec: Any, opts: list, ctx: Any, dist: Any, probe: dict[str, Any],
                job: dict[str, Any]) -> dict[str, Any]:
        return capacity.measure_probe(workload, spec, opts, ctx, ctx.device, dist, probe["budget_bytes"])

    headline = staticmethod(capacity.headline)


CORE_SEARCHES: tuple[type[Search], ...] = (CapacitySearch,)  # searches every workload offers
