"""Continuous (iteration-level) batching (Orca, OSDI 2022) on the `serve` workload: after every decode iteration
finished requests leave their slots and waiting ones join, instead of static batches that hold every slot until
their longest request ends (the workload's baseline scheduler). The scheduler itself, the trace and the metrics
(TTFT, TPOT, goodput) are the workload's (plugins/serve.py); this plugin sets `run.knobs.scheduler` and checks
that scheduling changed no request's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from harness import Check, Optimization, hookimpl
from harness.checks import TIE_RULE, diverges_at_tie


@dataclass
class ContinuousBatchingParams:
    """continuous_batching takes no parameters."""

    unknown_hint: ClassVar[str] = (". The trace and the server (requests, rate, slots, prompt and output lengths, "
                                   "SLOs) are fields of the `serve` workload (type: serve), and its baseline is "
                                   "static batching already: give the case no baseline entry")


class ContinuousBatching(Optimization):
    """Serve the trace with the iteration-level scheduler; the baseline serves it with static batches."""

    name = "continuous_batching"
    kind = "inference"
    workloads = ("serve",)
    description = "iteration-level scheduling of a request trace vs static batches of the same trace"
    Params = ContinuousBatchingParams

    def apply(self, run: Any) -> None:
        run.knobs.scheduler = "continuous"

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        ids = [i for i, _ in optimized["served"]]
        expected = optimized["trace_ids"]
        checks = [
            Check("every_request_served_once", sorted(ids) == sorted(expected),
                  {"served": len(ids), "requests": len(expected), "missing": sorted(set(expected) - set(ids)),
                   "duplicated": sorted({i for i in ids if ids.count(i) > 1})}, "exact"),
            equal_alone("outputs_equal_serving_alone", optimized["served"], optimized),
        ]
        if "served" in baseline:  # the static scheduler's outputs, against the same requests served alone
            checks.append(equal_alone("baseline_scheduler_outputs_equal_serving_alone", baseline["served"], optimized))
        return checks


def equal_alone(name: str, served: list[tuple[int, list[int]]], reference: dict[str, Any]) -> Check:
    """Each served request's tokens equal the same request generated alone (batch 1), or diverge first at one of
    that generation's near-ties (harness.checks.TIE_RULE: the slot cache's masked attention over all slots
    is a different kernel from batch-1 attention, and may break a tie the other way)."""
    served = dict(served)
    wrong, at_ties = [], []
    for i in reference["trace_ids"]:
        got, alone = served.get(i), reference["alone"][i]
        if got == alone:
            continue
        if got is not None and len(got) == len(alone) and diverges_at_tie(
                torch.tensor(alone), torch.tensor(got), reference["ties"][i]):
            at_ties.append(i)
        else:
            wrong.append(i)
    return Check(name, not wrong, {"requests": len(reference["trace_ids"]), "differing": wrong,
                                   "diverging_at_near_ties": at_ties}, TIE_RULE)


@hookimpl
def register_optimizations(register) -> None:
    register(ContinuousBatching)
