"""Byte accounting behind memory breakdowns and MBU: weights (each tensor once), buffers, the KV traffic of a
decode step per cache kind, and the regime an MBU implies (docs/measurement.md, U3)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from harness.core.memory import tensor_bytes
from harness.models.gpt import ModelArgs, kv_cache_bytes


def weights_of(module: nn.Module) -> list[torch.Tensor]:
    """A module's own weights: its parameters and persistent buffers (what its state_dict holds; a quantized
    Linear keeps int8 weights and scales as buffers). Non-persistent buffers (causal masks, rotary tables) are
    not weights."""
    skip = getattr(module, "_non_persistent_buffers_set", set())
    return list(module.parameters(recurse=False)) + [b for name, b in module.named_buffers(recurse=False)
                                                     if name not in skip]


def weight_bytes(model: nn.Module, seen: set | None = None) -> int:
    """Bytes of the weights a decode step reads: `weights_of` every module outside nn.Embedding lookups, each
    tensor once (a tied output head counts here, once); torch.ao's packed dynamic-quantized weights count
    their int8 bytes plus scales (gpt-fast's convention). `seen`: see harness.core.memory.tensor_bytes."""
    seen = set() if seen is None else seen
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        tensors = weights_of(module)
        if callable(getattr(module, "weight", None)):  # torch.ao dynamic-quantized Linear: packed params
            w = module.weight()
            total += w.numel() * w.element_size() + _qparams_bytes(w)
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            tensors += [bias] if bias is not None else []
        total += tensor_bytes(tensors, seen)
    return total


def _qparams_bytes(w: torch.Tensor) -> int:
    if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        return w.q_per_channel_scales().numel() * 8 + w.q_per_channel_zero_points().numel() * 8
    return 16


def embedding_bytes(model: nn.Module, seen: set | None = None) -> int:
    """Bytes of the nn.Embedding lookups' weights not already in `seen` (a tied head was counted as a weight)."""
    return tensor_bytes((p for m in model.modules() if isinstance(m, nn.Embedding)
                         for p in m.parameters(recurse=False)), seen)


def buffer_bytes(model: nn.Module, seen: set | None = None) -> int:
    """Bytes of non-persistent buffers (causal masks, rotary tables): memory, but not weights."""
    return tensor_bytes((b for m in model.modules() for name, b in m.named_buffers(recurse=False)
                         if name in getattr(m, "_non_persistent_buffers_set", set())), seen)


def train_state_bytes(model: nn.Module, optimizer: Any, grad_bytes: int) -> dict[str, int]:
    """Bytes on this rank of a training run's state: weights, gradients (`grad_bytes`, counted inside a step:
    zero_grad frees them) and optimizer states, from the tensors, each tensor once (a tied embedding and head
    are one matrix); buffers (causal masks, rotary tables), when the model has any, apart from the weights."""
    optimizer = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer: this rank's shard
    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    seen: set = set()
    out = {"weights": tensor_bytes(model.parameters(), seen), "gradients": grad_bytes,
           "optimizer_states": tensor_bytes(states)}
    buffers = tensor_bytes(model.buffers(), seen)
    if buffers:
        out["buffers"] = buffers
    return out


def kv_step_bytes(args: ModelArgs, batch: int, cache_kind: str, prompt_len: int, new_tokens: int,
                  element_bytes: int) -> float:
    """Bytes of KV cache one decode step moves, averaged over the new_tokens - 1 decode steps (U3).

    static: attention reads all max_len = prompt_len + new_tokens positions every step (masked, not skipped).
    dynamic: at cache length L, torch.cat reads L positions and writes L + 1, attention reads the L + 1:
    3 L + 2 positions, at the mean L = prompt_len + (new_tokens - 2) / 2. none: no cache, 0."""
    if cache_kind == "static":
        positions = prompt_len + new_tokens
    elif cache_kind == "dynamic":
        positions = 3 * (prompt_len + (new_tokens - 2) / 2) + 2
    else:
        return 0.0
    return float(kv_cache_bytes(args, batch, 1, element_bytes) * positions)


def decode_figures(median_s: float, ttft_s: float, new_tokens: int, batch: int, sequential: bool) -> dict[str, Any]:
    """A generate's latency figures (docs/measurement.md): e2e = the median step; TPOT = (the time one sequence
    took - TTFT) / (new_tokens - 1), where one sequence takes e2e when the batch runs together and e2e / batch
    when sequences run one after another (`sequential`); tokens/s total = batch x new_tokens / e2e, per sequence
    new_tokens / the time one sequence took. Seconds and tokens per second."""
    seq_s = median_s / batch if sequential else median_s
    tpot = (seq_s - ttft_s) / (new_tokens - 1) if new_tokens > 1 else None
    return {"ttft_s": ttft_s, "tpot_s": tpot, "e2e_s": median_s, "tokens_per_s_total": batch * new_tokens / median_s,
            "tokens_per_s_per_seq": new_tokens / seq_s}


def bandwidth_figures(weight_bytes: int, kv_bytes_per_step: int, tpot_s: float,
                      peak_bandwidth: float | None) -> dict[str, Any]:
    """Bytes a decode step moves (weights + KV cache traffic, `kv_step_bytes`) per TPOT, and MBU = that
    achieved bandwidth / the device's peak bandwidth (bytes/s; None: unknown, e.g. a CPU), with its `regime`."""
    achieved = (weight_bytes + kv_bytes_per_step) / tpot_s
    mbu = achieved / peak_bandwidth if peak_bandwidth else None
    return {"kv_bytes_per_decode_step": kv_bytes_per_step, "achieved_bandwidth_bytes_s": achieved, "mbu": mbu,
            "regime": regime(mbu)}


def regime(mbu: float | None) -> str | None:
    """launch-bound (MBU < 10 %), bandwidth-bound (>= 50 %), else mixed; None when MBU is unknown."""
    if mbu is None:
        return None
    return "launch-bound" if mbu < 0.10 else "bandwidth-bound" if mbu >= 0.50 else "mixed"


def zero_bytes(n: int, trainable: int, world: int, stage: str | None) -> dict[str, Any]:
    """Per-rank bytes at rest of fp32 AdamW training (16 bytes/param) by the ZeRO formulas (Rajbhandari et al.
    2020, ZeRO, section 5): n parameters, `trainable` of them with gradients and Adam states (LoRA: fewer),
    `world` ranks, `stage` None / "zero1" / "fsdp_grad_op" / "fsdp_full".

    No sharding: 4 n weights + 4 t grads + 8 t Adam states; zero1 shards the states (8 t / N); FSDP2 shards all
    three (/ N at rest). fsdp_grad_op (~ZeRO-2) differs from fsdp_full (~ZeRO-3) only inside the step: it
    keeps the gathered 4 n weights from forward to backward."""
    fsdp = stage in ("fsdp_grad_op", "fsdp_full")
    psi_t = "Psi" if trainable == n else "Psi_t"
    return {"formula": f"fp32 AdamW, Psi={n}{f', Psi_t={trainable} trainable' * (trainable != n)}, N={world}, "
                       f"stage={stage or 'none'}: weights 4Psi{'/N' * fsdp} + grads 4{psi_t}{'/N' * fsdp} + "
                       f"Adam states 8{psi_t}{'/N' * bool(stage)} per rank at rest",
            "weights": 4 * n // world if fsdp else 4 * n,
            "gradients": 4 * trainable // world if fsdp else 4 * trainable,
            "optimizer_states": 8 * trainable // world if stage else 8 * trainable}
