"""A GPT (pre-norm, learned positions, SDPA attention, untied head) in the shape of nanoGPT, with KV caches.

Presets run from `nano` (tests on a 2-core CPU) to the two shapes of the hand-measured reference figures:
`small` (12 x 768, GPT-2 small) and `medium` (24 x 1024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelArgs:
    """Shape of the GPT. `vocab_size` 256 is the byte-level tokenizer of `harness.models.data`."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    vocab_size: int = 256
    block_size: int = 128
    dropout: float = 0.0

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelArgs:
        if name not in PRESETS:
            raise KeyError(f"unknown model preset '{name}'; known: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


PRESETS = {
    "nano": ModelArgs(n_layer=2, n_head=4, n_embd=64, vocab_size=256, block_size=256),
    "micro": ModelArgs(n_layer=2, n_head=2, n_embd=32, vocab_size=256, block_size=256),  # speculative draft
    "cpu": ModelArgs(n_layer=4, n_head=4, n_embd=256, vocab_size=256, block_size=512),  # CPU reference shape
    "small": ModelArgs(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, block_size=1024),
    "medium": ModelArgs(n_layer=24, n_head=16, n_embd=1024, vocab_size=50304, block_size=1024),
    "large": ModelArgs(n_layer=24, n_head=16, n_embd=2048, vocab_size=50304, block_size=2048),
}


class DynamicCache:
    """KV cache that grows by concatenation each step (what a first implementation does)."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor):
        # k, v: [B, H, T_new, D] -> all keys/values so far [B, H, T_all, D]
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v, None  # no mask: the new queries see every cached position

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class StaticCache(nn.Module):
    """Pre-allocated KV cache [B, H, max_len, D] written at `input_pos`: fixed shapes, as CUDA graphs need."""

    def __init__(self, args: ModelArgs, batch: int, max_len: int, dtype, device):
        super().__init__()
        shape = (args.n_layer, batch, args.n_head, max_len, args.head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, input_pos: torch.Tensor):
        self.k[layer].index_copy_(2, input_pos, k)
        self.v[layer].index_copy_(2, input_pos, v)
        # mask [T_new, max_len]: query at position p sees keys at positions <= p
        mask = torch.arange(self.max_len, device=k.device)[None, :] <= input_pos[:, None]
        return self.k[layer], self.v[layer], mask

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


def padding_mask(input_pos: torch.Tensor, pad: torch.Tensor, length: int) -> torch.Tensor:
    """[B, 1, T, length] attention mask of a left-padded batch: the query in column p sees the key columns
    c <= p holding its row's tokens (c >= pad); a padding query sees itself only, so no softmax row is empty."""
    cols = torch.arange(length, device=pad.device)
    causal = cols[None, :] <= input_pos[:, None]  # [T, length]
    own_tokens = cols[None, None, :] >= pad[:, None, None]  # [B, 1, length]
    itself = cols[None, :] == input_pos[:, None]  # [T, length]
    return ((causal & own_tokens) | itself)[:, None]


class CausalSelfAttention(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.args, self.layer = args, layer
        self.qkv = nn.Linear(args.n_embd, 3 * args.n_embd)
        self.proj = nn.Linear(args.n_embd, args.n_embd)

    def forward(self, x: torch.Tensor, cache=None, input_pos=None, pad=None) -> torch.Tensor:
        B, T, C = x.shape  # x: [B, T, C]
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.args.n_head, self.args.head_dim).transpose(1, 2) for t in (q, k, v))
        mask = None
        if cache is not None:
            k, v, mask = cache.update(self.layer, k, v, input_pos)
        if pad is not None:  # key columns are absolute positions 0.. with every cache and without one
            mask = padding_mask(input_pos, pad, k.size(2))
        if mask is None:
            # Causal within the new tokens; with a dynamic cache the earlier positions come first in k/v.
            past = k.size(2) - T
            is_causal = T > 1
            if is_causal and past > 0:
                mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=past)
                is_causal = False
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # y: [B, T, C]
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.fc = nn.Linear(args.n_embd, 4 * args.n_embd)
        self.proj = nn.Linear(4 * args.n_embd, args.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, args: ModelArgs, layer: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(args.n_embd)
        self.attn = CausalSelfAttention(args, layer)
        self.ln2 = nn.LayerNorm(args.n_embd)
        self.mlp = MLP(args)

    def forward(self, x: torch.Tensor, cache=None, input_pos=None, pad=None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, input_pos, pad)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.wte = nn.Embedding(args.vocab_size, args.n_embd)
        self.wpe = nn.Embedding(args.block_size, args.n_embd)
        self.blocks = nn.ModuleList(Block(args, i) for i in range(args.n_layer))
        self.ln_f = nn.LayerNorm(args.n_embd)
        self.lm_head = nn.Linear(args.n_embd, args.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2 scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * args.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor, targets=None, cache=None, input_pos=None, pad=None):
        # idx: [B, T] token ids; input_pos: [T] columns (absolute positions, default 0..T-1) of idx in the cache;
        # pad: [B] left-padding tokens per row of a ragged batch: a row's own positions start after its padding
        T = idx.size(1)
        if input_pos is None:
            input_pos = torch.arange(T, device=idx.device)
        positions = input_pos if pad is None else (input_pos[None, :] - pad[:, None]).clamp(min=0)  # [T] | [B, T]
        x = self.wte(idx) + self.wpe(positions)
        for block in self.blocks:
            x = block(x, cache, input_pos, pad)
        logits = self.lm_head(self.ln_f(x))  # [B, T, vocab]
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def new_cache(self, kind: str, batch: int, max_len: int):
        """A KV cache for `forward(..., cache=)`: kind "dynamic" (grows by concatenation) or "static"."""
        if kind == "dynamic":
            return DynamicCache(self.args.n_layer)
        p = self.lm_head.weight
        return StaticCache(self.args, batch, max_len, p.dtype, p.device)

    def num_params(self, matmul_only: bool = False) -> int:
        """All parameters, or (matmul_only) those in matmuls: embedding lookups excluded (torchtitan's N)."""
        return matmul_params(self) if matmul_only else sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token, 6N + 12 L H Q T (PaLM appendix B; N = matmul parameters, T = seq_len)."""
        a = self.args
        return 6 * self.num_params(matmul_only=True) + 12 * a.n_layer * a.n_head * a.head_dim * seq_len


def matmul_params(model: nn.Module) -> int:
    """Parameters outside nn.Embedding lookups, each counted once (torchtitan's N for 6N): a head tied to the
    input embedding is a Linear's weight, so it counts; positional and token lookups do not."""
    unique = {id(p): p for m in model.modules() if not isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in unique.values())


def kv_cache_bytes(args: ModelArgs, batch: int, seq_len: int, bytes_per_element: int) -> int:
    """2 x layers x batch x seq x kv_heads x head_dim x bytes (`EFFECTS.md`)."""
    return 2 * args.n_layer * batch * seq_len * args.n_head * args.head_dim * bytes_per_element
