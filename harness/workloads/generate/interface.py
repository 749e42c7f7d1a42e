"""`GenerateAPI`: what an inference optimization may touch on a generation run, and nothing else.

Optimizations that declare `requires = GenerateAPI` (kv_cache, quantization, speculative_decoding, batching,
distillation) apply to every workload whose run implements it; `harness validate` refuses them elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from harness.core.workload import RunContext
from harness.workloads.generate.knobs import GenerateKnobs
from harness.workloads.generate.spec import GenerateSpec


class GenerateAPI(Protocol):
    """A generation run: prompts in, exactly `spec.new_tokens` tokens out per sequence; one `step()` is one
    whole generate of the batch.

    Its `outputs()` returns: `tokens` [B, n] and `prompts`, `pad` (CPU), `ties` (greedy: the positions where
    the top two logits are within the tie rule), `perplexity` and `top1` on held-out text, `kv_cache` (measured
    and formula bytes) and `weight_bytes`. The optimizations' checks compare those of the two sides.
    """

    ctx: RunContext  # device, environment, seed, rank and world size; `ctx.cache_path` for costly artifacts
    info: dict[str, Any]  # facts to report beside the figures (what was applied, counts)
    knobs: GenerateKnobs  # cache kind, decode step, generate function, layout, extra metrics: GenerateKnobs
    spec: GenerateSpec  # the case's settings (prompt_len, new_tokens, sampling, decoder, ...): read only
    device: torch.device  # where the model and prompts live
    dtype: torch.dtype  # the weights' and activations' dtype; KV caches follow it
    model: nn.Module  # the harness GPT (or an hf: adapter): wrap, quantize or replace it in place
    prompts: torch.Tensor  # [B, P] token ids on `device`; batching replaces them (with `pad`)
    pad: torch.Tensor | None  # [B] left-padding per prompt, or None
    token_times: list[list[float]] | None  # while ITL is measured: a custom generate_fn appends token times
    timed: bool  # True only during the timed blocks: keep per-call records for extra metrics then only

    @property
    def batch(self) -> int:
        """Sequences generated per step."""

    def held_out(self, n: int, length: int, seed: int) -> torch.Tensor:
        """[n, length] prompt tokens as the workload's `prompts` setting says, on the run's device."""

    def median_time(self, fn: Callable[[], Any], repeats: int) -> float:
        """Median synchronized wall time of `repeats` calls of fn (figures measured beside the timed blocks)."""


GenerateAPI.workload_kind = "inference"
