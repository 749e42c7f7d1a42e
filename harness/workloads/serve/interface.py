"""`ServeAPI`: what a serving optimization may touch on a serving run, and nothing else.

Optimizations that declare `requires = ServeAPI` (continuous_batching, chunked_prefill) apply to every workload
whose run implements it; `harness validate` refuses them elsewhere.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from harness.core.workload import RunContext
from harness.workloads.serve.knobs import ServeKnobs


class ServeAPI(Protocol):
    """A serving run: one `step()` serves the whole seeded request trace in real time with a fixed number of
    slots.

    Its `outputs()` returns `served` [(request index, its tokens)] and, per request, the tokens of serving it
    alone (`alone`), which `serving_checks` compares; `extra_metrics` the TTFT / TPOT / ITL percentiles and
    goodput over the timed serves.
    """

    ctx: RunContext  # device, environment, seed, rank and world size; `ctx.cache_path` for costly artifacts
    info: dict[str, Any]  # facts to report beside the figures (what was applied, counts)
    knobs: ServeKnobs  # scheduler and prefill chunk: ServeKnobs
    device: torch.device  # where the model and the slot cache live
    model: nn.Module  # a harness GPT, whose attention takes the slot cache
    timed: bool  # True only during the timed serves: requests are recorded for the metrics then only

    def warm_up(self, requests: int) -> None:
        """Serve the trace's first `requests` requests once, untimed (a serving search's warm-up)."""


ServeAPI.workload_kind = "inference"
