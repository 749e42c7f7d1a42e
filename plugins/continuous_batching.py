"""Continuous (iteration-level) batching (Orca, OSDI 2022) on the `serve` workload: after every decode iteration
finished requests leave their slots and waiting ones join, instead of static batches that hold every slot until
their longest request ends (the workload's baseline scheduler). The scheduler itself, the trace and the metrics
(TTFT, TPOT, goodput) are the workload's (harness/workloads/serve/); this plugin sets `run.knobs.scheduler` and checks
that scheduling changed no request's tokens (`serve.serving_checks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from harness.api import Check, Optimization, ServeAPI, hookimpl
from harness.workloads.serve import serving_checks


@dataclass
class ContinuousBatchingParams:
    """continuous_batching takes no parameters."""

    unknown_hint: ClassVar[str] = (". The trace and the server (requests, rate, slots, prompt and output lengths, "
                                   "SLOs) are fields of the `serve` workload (type: serve), and its baseline is "
                                   "static batching already: give the case no baseline entry")


class ContinuousBatching(Optimization):
    """Serve the trace with the iteration-level scheduler; the baseline serves it with static batches."""

    name = "continuous_batching"
    requires = ServeAPI
    description = "iteration-level scheduling of a request trace vs static batches of the same trace"
    Params = ContinuousBatchingParams

    def apply(self, run: ServeAPI) -> None:
        run.knobs.scheduler = "continuous"

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        return serving_checks(baseline, optimized)


@hookimpl
def register_optimizations(register) -> None:
    register(ContinuousBatching)
