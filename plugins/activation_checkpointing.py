"""Activation checkpointing: drop the activations inside blocks in forward, recompute them in backward.

On the built-in GPT each chosen block's forward is wrapped in `torch.utils.checkpoint`; on an hf: model the
library's own switch is used (`HFCausalLM.checkpoint_layers`: transformers' activation / gradient checkpointing,
non-reentrant), so the figures are what a user's training script gets.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from harness.api import Check, Optimization, ParamError, TrainAPI, hookimpl
from harness.core.checks import noise_of, precision_mismatch, tensors_check
from harness.models.reference import model_source

# Recompute runs the same kernels on the same inputs, so gradients match to fp32 round-off (bitwise on CPU in
# our runs); the tolerance allows for non-deterministic reductions on GPUs.
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6
# On CUDA under bf16/fp16 autocast, attention backward kernels may accumulate with atomics (nondeterministic order),
# and a different fp32 partial sum can round the half-precision result one ulp the other way (2^-8 relative for
# bf16), which the next matmuls carry on: there gradients agree to ~2 half-precision ulps, per element or of the
# tensor's largest value for sums that cancel. Not yet measured on a GPU; the CPU check stays at fp32 round-off.
HALF_GRAD_RTOL, HALF_GRAD_ATOL_OF_MAX = 2e-2, 1e-2


@dataclass
class CheckpointParams:
    """Parameters of activation_checkpointing."""

    every: int = field(default=1, metadata={"help": "checkpoint every k-th block (1 = every block)"})

    def __post_init__(self):
        if self.every < 1:
            raise ParamError("every", f"every must be >= 1 (1 = every block; got {self.every})")


def checkpointed(run: TrainAPI, forward):
    """`forward` of a block run under non-reentrant `torch.utils.checkpoint`."""

    def wrapped(x: torch.Tensor, *args) -> torch.Tensor:
        run.keep_for_backward(x)  # the input the checkpoint keeps for recompute
        return checkpoint(forward, x, *args, use_reentrant=False)

    return wrapped


def count_input(run: TrainAPI, module, args, kwargs) -> None:
    """Forward pre-hook of a layer the library checkpoints: count the hidden states it keeps for recompute."""
    x = args[0] if args else kwargs.get("hidden_states")
    if isinstance(x, torch.Tensor):
        run.keep_for_backward(x)


class ActivationCheckpointing(Optimization):
    """Checkpoint transformer blocks (Chen et al. 2016): less activation memory for one extra forward."""

    name = "activation_checkpointing"
    requires = TrainAPI
    description = "torch.utils.checkpoint (non-reentrant) on every k-th block; gradients equal the plain run."
    Params = CheckpointParams

    def validate(self, spec: Any, plugins: list) -> None:
        source, path = model_source(getattr(spec, "model", ""))
        if source == "hf":  # the library's own switch must exist for this model
            from harness.models.hf import meta_model

            hf = meta_model(path)
            if not getattr(hf, "supports_gradient_checkpointing", False):
                raise ParamError("", f"{type(hf).__name__} does not support activation checkpointing in "
                                     "transformers")
            if self.params.every > 1 and not hasattr(hf, "activation_checkpointing_enable"):
                raise ParamError("every", "every > 1 on an hf: model needs a transformers with "
                                          "activation_checkpointing_enable(every_n_layers=...); use every: 1")

    def apply(self, run: TrainAPI) -> None:
        model, blocks = run.raw_model, run.blocks()
        if hasattr(model, "checkpoint_layers"):  # a user model: its library's own checkpointing
            chosen = model.checkpoint_layers(self.params.every)
            for i in chosen:
                blocks[i].register_forward_pre_hook(functools.partial(count_input, run), with_kwargs=True)
        else:
            chosen = list(range(0, len(blocks), self.params.every))
            for i in chosen:
                blocks[i].forward = checkpointed(run, blocks[i].forward)
        if not chosen:
            raise ValueError("no decoder layer was checkpointed")
        run.info["checkpointed_blocks"] = f"{len(chosen)} of {len(blocks)}"

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        mismatch = precision_mismatch("grads_equal_plain", baseline, optimized)
        if mismatch:
            return [mismatch]
        if optimized.get("device") == "cuda" and optimized.get("precision") in ("bfloat16", "float16"):
            grads = tensors_check("grads_equal_plain", baseline["grads"], optimized["grads"], HALF_GRAD_RTOL,
                                  GRAD_ATOL, HALF_GRAD_ATOL_OF_MAX, noise=noise_of(baseline, "grads"))
        else:
            grads = tensors_check("grads_equal_plain", baseline["grads"], optimized["grads"], GRAD_RTOL, GRAD_ATOL,
                                  noise=noise_of(baseline, "grads"))
        checks = [grads]
        b, o = baseline.get("activation_bytes"), optimized.get("activation_bytes")
        if b and o:
            checks.append(Check("activation_bytes_lower", o < b,
                                {"baseline": b, "optimized": o, "ratio": o / b},
                                "saved-for-backward bytes of one forward, optimized < baseline"))
        return checks


@hookimpl
def register_optimizations(register):
    register(ActivationCheckpointing)
