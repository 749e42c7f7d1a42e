"""`ServeKnobs`: the typed settings a serving optimization sets on a serving run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.core.workload import Knobs


@dataclass
class ServeKnobs(Knobs):
    """What an optimization may set on a `ServeRun` (listed in docs/plugins.md); beyond them it may wrap or
    replace `model` (a harness GPT, whose attention takes the slot cache)."""

    scheduler: Literal["static", "continuous"] = field(default="static", metadata={
        "help": "static: admit a batch only when every slot is free; continuous: join and leave after every decode "
                "iteration (continuous_batching)"})
    prefill_chunk: int | None = field(default=None, metadata={
        "help": "prompt tokens prefilled per iteration at most, a long prompt spread over iterations with decodes "
                "between its chunks; None: each prompt whole (chunked_prefill)"})
