"""`GenerateKnobs`: the typed settings an inference optimization sets on a generation run."""


from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness.core.workload import Knobs
from harness.workloads.generate.decode import (
    decode_one_token,
)


@dataclass
class GenerateKnobs(Knobs):
    """What an inference optimization may set on a `GenerateRun` (listed in docs/plugins.md); core reads them.
    Plugins also wrap or replace `model`, and may replace `prompts` [B, P] with `pad` [B] (left padding)."""

    cache_kind: Literal["none", "dynamic", "static"] = field(default="none", metadata={
        "help": "KV cache: none (recompute the prefix) / dynamic (grown by concatenation) / static (kv_cache)"})
    decode: Callable[..., torch.Tensor] = field(default=decode_one_token, metadata={
        "help": "the one-token decode step (model, tok [B, 1], input_pos [1], cache, pad) -> logits [B, V]; "
                "kv_cache compiles it for CUDA graphs"})
    compiled_decode: bool = field(default=False, metadata={
        "help": "decoder: library: let transformers compile its static-cache decode step (kv_cache)"})
    generate_fn: Callable[..., torch.Tensor] | None = field(default=None, metadata={
        "help": "replaces the whole generate: fn(run, prompts [B, P], n) -> [B, n] (speculative_decoding)"})
    assistant: Any = field(default=None, metadata={
        "help": "decoder: library: a draft model for transformers' assisted generation (speculative_decoding)"})
    layout: Literal["batched", "sequential"] = field(default="batched", metadata={
        "help": "batched: one forward for the batch; sequential: one sequence at a time (per-sequence figures "
                "follow it; batching, speculative_decoding)"})
    metric_fns: list[Callable[[float], dict[str, Any]]] = field(default_factory=list, metadata={
        "help": "extra fn(median_s) -> dict merged into the case's metrics (quantization, speculative_decoding)"})


