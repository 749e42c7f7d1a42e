"""Static batching: generate `batch_size` same-length prompts as one batch instead of one after another.

A decode step at small batch reads every weight once whatever the batch, so total tokens/s grows almost
linearly with the batch until the step becomes compute-bound, while each sequence waits a little longer.
The baseline side of a case applies this plugin with `mode: sequential` (same prompts, one at a time), so both
sides do the same work and the speedup is the throughput gain; tokens/s per sequence and total are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from harness import Check, Optimization, ParamError, hookimpl
from harness.inference import compare_tokens, held_out


@dataclass
class BatchingParams:
    batch_size: int | None = field(default=None, metadata={
        "help": "prompts per step (null: the workload's batch); give the baseline entry the same value"})
    mode: Literal["batched", "sequential"] = field(default="batched", metadata={
        "help": "batched: one forward per token for the whole batch; sequential: one prompt at a time (baseline)"})

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ParamError("batch_size", f"must be >= 1 or null (got {self.batch_size})")


class Batching(Optimization):
    """Run the batch together (or, as the baseline, one sequence at a time)."""

    name = "batching"
    kind = "inference"
    description = "static batching; each sequence's tokens must equal generating it alone"
    Params = BatchingParams

    def apply(self, run: Any) -> None:
        if self.params.batch_size is not None and self.params.batch_size != run.batch:
            spec = run.spec
            run.prompts = held_out(self.params.batch_size, spec.prompt_len, run.ctx.seed,
                                   spec.prompts == "synthetic", run.model.args.vocab_size).to(run.device)
        run.layout = self.params.mode
        run.info.update(layout=run.layout, batch=run.batch)

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        checks = [compare_tokens("tokens_identical_to_one_at_a_time", baseline["tokens"], optimized["tokens"])]
        if not checks[0].passed and baseline["tokens"].shape != optimized["tokens"].shape:
            checks[0].values["hint"] = "give the baseline's batching entry the same batch_size"
        return checks


@hookimpl
def register_optimizations(register) -> None:
    register(Batching)
