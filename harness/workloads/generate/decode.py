"""The flat decode functions the generate workload and its plugins share, gpt-fast style: a sampler, decoding
without a cache, one cached decode step, prefill then decode with a cache, and a static cache for a model.
Shapes: prompts [B, P] -> tokens [B, n]; logits [B, V]; `pad` [B] left-padding tokens per prompt or None."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.models.gpt import GPT, StaticCache


def make_sampler(spec: Any, seed: int, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """logits [B, V] -> tokens [B] for `spec` (a GenerateSpec: sampling, temperature, top_k); a fresh seeded
    generator per call of this function (one per generate)."""
    if spec.sampling == "greedy":
        return lambda logits: logits.argmax(dim=-1)
    gen = torch.Generator(device=device).manual_seed(seed)

    def sample(logits: torch.Tensor) -> torch.Tensor:
        return torch.multinomial(probabilities(logits, spec), 1, generator=gen).squeeze(-1)
    return sample


def probabilities(logits: torch.Tensor, spec: Any) -> torch.Tensor:
    """Sampling distribution: softmax(logits / temperature), restricted to the top_k tokens if set."""
    logits = logits.float() / spec.temperature
    if spec.top_k is not None:
        kth = torch.topk(logits, min(spec.top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.softmax(logits, dim=-1)


def generate_no_cache(model: nn.Module, prompts: torch.Tensor, n: int, sampler, pad=None) -> torch.Tensor:
    """Baseline decode: recompute the whole prefix for every new token. prompts [B, P] -> [B, n];
    `pad` [B]: left-padding tokens per prompt (a ragged batch), None for equal-length prompts."""
    idx = prompts
    for _ in range(n):
        tok = sampler(model(idx, pad=pad)[:, -1])  # [B]
        idx = torch.cat([idx, tok[:, None]], dim=1)
    return idx[:, prompts.size(1):]


def decode_one_token(model: nn.Module, tok: torch.Tensor, input_pos: torch.Tensor, cache, pad=None) -> torch.Tensor:
    """tok [B, 1] at input_pos [1] -> logits [B, V], appending to the cache."""
    return model(tok, cache=cache, input_pos=input_pos, pad=pad)[:, -1]


def generate_cached(model: nn.Module, prompts: torch.Tensor, n: int, sampler, cache, decode, pad=None) -> torch.Tensor:
    """Prefill the prompt into `cache`, then decode one token per forward. prompts [B, P] -> [B, n];
    `pad` as in `generate_no_cache`."""
    P = prompts.size(1)
    pos = torch.arange(P, device=prompts.device)
    tok = sampler(model(prompts, cache=cache, input_pos=pos, pad=pad)[:, -1])  # [B]
    out = [tok]
    for i in range(n - 1):
        tok = sampler(decode(model, tok[:, None], pos[-1:] + 1 + i, cache, pad))
        out.append(tok)
    return torch.stack(out, dim=1)


def static_cache(model: nn.Module, batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
    """A static KV cache for `model`: our GPT's is built in the run's dtype (a quantized model's weights are not
    in it); a user model (hf:) builds its own."""
    if isinstance(model, GPT):
        return StaticCache(model.args, batch, max_len, dtype, device)
    return model.new_cache("static", batch, max_len)
