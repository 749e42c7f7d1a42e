"""Activation checkpointing: drop the activations inside blocks in forward, recompute them in backward."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from harness import Check, Optimization, ParamError, hookimpl
from harness.checks import noise_of, precision_mismatch, tensors_check

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


def checkpointed(run: Any, forward):
    """`forward` of a block run under non-reentrant `torch.utils.checkpoint`."""

    def wrapped(x: torch.Tensor, *args) -> torch.Tensor:
        if run.saved is not None and torch.is_grad_enabled():  # the input the checkpoint keeps for recompute
            run.saved[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return checkpoint(forward, x, *args, use_reentrant=False)

    return wrapped


class ActivationCheckpointing(Optimization):
    """Checkpoint transformer blocks (Chen et al. 2016): less activation memory for one extra forward."""

    name = "activation_checkpointing"
    kind = "training"
    description = "torch.utils.checkpoint (non-reentrant) on every k-th block; gradients equal the plain run."
    Params = CheckpointParams

    def apply(self, run: Any) -> None:
        blocks = run.raw_model.blocks
        chosen = list(range(0, len(blocks), self.params.every))
        for i in chosen:
            blocks[i].forward = checkpointed(run, blocks[i].forward)
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
