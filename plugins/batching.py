"""Static batching: generate `batch_size` prompts as one batch instead of one after another.

A decode step at small batch reads every weight once whatever the batch, so total tokens/s grows almost
linearly with the batch until the step becomes compute-bound, while each sequence waits a little longer.
The baseline side of a case applies this plugin with `mode: sequential` (same prompts, one at a time), so both
sides do the same work and the speedup is the throughput gain; tokens/s per sequence and total are reported.

With `prompt_min`, prompt lengths vary: the batch is left-padded to the longest prompt and the padding is masked
out of attention and positions (the invariant proves it: each row equals its unpadded prompt generated alone).
The padded positions are computed and cached anyway, which is what static batching of ragged prompts costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness.api import Check, GenerateAPI, Optimization, ParamError, hookimpl
from harness.core.checks import tokens_check

PAD_TOKEN = 0


@dataclass
class BatchingParams:
    batch_size: int | None = field(default=None, metadata={
        "help": "prompts per step (null: the workload's batch); give the baseline entry the same value"})
    mode: Literal["batched", "sequential"] = field(default="batched", metadata={
        "help": "batched: one forward per token for the whole batch; sequential: one prompt at a time (baseline)"})
    prompt_min: int | None = field(default=None, metadata={
        "help": "shortest prompt: lengths drawn (seeded) from prompt_min..prompt_len and left-padded in the "
                "batched mode; null: every prompt prompt_len tokens. Give the baseline entry the same value"})

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ParamError("batch_size", f"must be >= 1 or null (got {self.batch_size})")
        if self.prompt_min is not None and self.prompt_min < 1:
            raise ParamError("prompt_min", f"must be >= 1 or null (got {self.prompt_min})")


class Batching(Optimization):
    """Run the batch together (or, as the baseline, one sequence at a time)."""

    name = "batching"
    requires = GenerateAPI
    description = "static batching; each sequence's tokens must equal generating it alone"
    Params = BatchingParams
    baseline_needs = ("batching is measured against the same prompts one at a time: give the case "
                      "`baseline: [{batching: {batch_size: N, mode: sequential}}]` with the same batch_size and "
                      "prompt_min (and the same other plugins)")

    def validate(self, spec: Any, plugins: list) -> None:
        if self.params.prompt_min is not None and self.params.prompt_min > spec.prompt_len:
            raise ParamError("prompt_min", f"must be <= the workload's prompt_len {spec.prompt_len} "
                                           f"(got {self.params.prompt_min})")

    def apply(self, run: GenerateAPI) -> None:
        if self.params.batch_size is not None and self.params.batch_size != run.batch:
            run.prompts = run.held_out(self.params.batch_size, run.spec.prompt_len, run.ctx.seed)
        if self.params.prompt_min is not None:
            self.make_ragged(run)
        run.knobs.layout = self.params.mode
        run.info.update(layout=run.knobs.layout, batch=run.batch)

    def make_ragged(self, run: Any) -> None:
        """Seeded prompt lengths in prompt_min..prompt_len; each prompt keeps its last tokens, left-padded."""
        P, B = run.prompts.size(1), run.batch
        if self.params.prompt_min > P:
            raise ParamError("prompt_min", f"must be <= the workload's prompt_len {P} (got {self.params.prompt_min})")
        gen = torch.Generator().manual_seed(run.ctx.seed + 3)
        lengths = torch.randint(self.params.prompt_min, P + 1, (B,), generator=gen)
        pad = (P - lengths).to(run.device)
        padding = torch.arange(P, device=run.device)[None, :] < pad[:, None]
        run.prompts = run.prompts.masked_fill(padding, PAD_TOKEN)
        run.pad = pad if bool(pad.any()) else None  # all full length: the plain path, no mask
        run.info.update(prompt_lengths=f"{int(lengths.min())}..{int(lengths.max())}",
                        padding_fraction=round(float(pad.sum()) / (B * P), 4))

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        checks = [tokens_check("tokens_identical_to_one_at_a_time", baseline, optimized)]
        if not checks[0].passed and baseline["tokens"].shape != optimized["tokens"].shape:
            checks[0].values["hint"] = "give the baseline's batching entry the same batch_size"
        elif not checks[0].passed and not same_prompts(baseline, optimized):
            checks[0].values["hint"] = "give the baseline's batching entry the same prompt_min"
        return checks


def same_prompts(baseline: dict[str, Any], optimized: dict[str, Any]) -> bool:
    """Both sides generated from the same prompts with the same padding."""
    pads = baseline.get("pad"), optimized.get("pad")
    same_pad = (pads[0] is None) == (pads[1] is None) and (pads[0] is None or torch.equal(*pads))
    return same_pad and torch.equal(baseline["prompts"], optimized["prompts"])


@hookimpl
def register_optimizations(register) -> None:
    register(Batching)
