"""Chunked prefill (vLLM's chunked prefill; Sarathi-Serve, OSDI 2024) on the `serve` workload: a prompt is
prefilled at most `chunk` tokens per scheduler iteration, with the running requests' decode step between its
chunks, instead of whole before the next decode. A long prompt then no longer stalls every running request for
its whole prefill: their TPOT tail falls, at the cost of more forward calls and a later first token for the long
prompt itself. The baseline is the same scheduler with whole-prompt prefill; each chunk attends to the slot's
earlier chunks (harness/workloads/serve/, SlotCache), so every request's tokens must still equal serving it alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.api import Check, Optimization, ParamError, ServeAPI, hookimpl
from harness.workloads.serve import serving_checks


@dataclass
class ChunkedPrefillParams:
    """Parameters of chunked_prefill."""

    chunk: int = field(default=32, metadata={"help": "prompt tokens prefilled per scheduler iteration at most"})

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise ParamError("chunk", f"must be >= 1 (got {self.chunk})")


class ChunkedPrefill(Optimization):
    """Prefill prompts `chunk` tokens per iteration, decoding the running requests between chunks."""

    name = "chunked_prefill"
    requires = ServeAPI
    description = "prompts prefilled in chunks between decode iterations, so a long prompt does not stall decodes"
    Params = ChunkedPrefillParams

    def apply(self, run: ServeAPI) -> None:
        run.knobs.prefill_chunk = self.params.chunk
        run.info["prefill_chunk"] = self.params.chunk

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        return serving_checks(baseline, optimized)


@hookimpl
def register_optimizations(register) -> None:
    register(ChunkedPrefill)
