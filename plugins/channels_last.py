"""channels_last: the model's 4-d weights and the input images in NHWC memory order (`torch.channels_last`).

The tensors keep their shapes and values; only their strides change, so the convolution and normalisation
kernels (oneDNN on CPU, cuDNN on CUDA) take their NHWC paths, which on GPUs avoid layout transposes around tensor
core kernels. It goes through `VisionAPI.set_memory_format`, which also keeps the slices `shard_batches` makes
(DDP) in that layout; `harness validate` refuses it on a workload without images (the LM `train`).
"""

from __future__ import annotations

from typing import Any

import torch

from harness.api import Check, Optimization, hookimpl, loss_check, noise_of, precision_mismatch, tensors_check
from harness.workloads.vision.interface import VisionAPI

# The NHWC kernels compute the same sums in another order (other blockings of the C x kh x kw reduction in
# forward, of the B x H x W one for weight gradients), so first-step gradients agree to fp32 round-off, which in
# a sum that cancels scales with the terms, not with the result: an atol of a fraction of each tensor's largest
# value. Measured on CPU (batch 8-16, 32 x 32): max |diff| / max |grad| 2.4e-6 (resnet_tiny), 1.0e-5
# (resnet18, BatchNorm), 3.9e-6 (resnet18, GroupNorm); 10x that is allowed. A loss scaled by 1.01 moves every
# gradient by 1e-2 of itself and fails; other weights (another seed) by ~1.
GRAD_RTOL, GRAD_ATOL, GRAD_ATOL_OF_MAX = 1e-3, 1e-7, 1e-4
# Under bf16 / fp16 autocast on both sides a different fp32 partial sum can round a half-precision activation
# one ulp the other way (2^-8 relative for bf16), which later layers carry: activation_checkpointing's
# half-precision tolerance. Measured on CPU bf16 (resnet18): max |diff| / max |grad| 2e-3.
HALF_GRAD_RTOL, HALF_GRAD_ATOL_OF_MAX = 2e-2, 1e-2
# AdamW's first updates are ~lr x sign(g), so round-off on a near-zero gradient moves that weight by up to 2 lr
# per step: parameters are not compared, the loss after K steps is. Measured |diff| after 3 steps, lr 1e-4:
# 2e-6 (resnet18, BatchNorm); 8.5e-4 at lr 1e-3. A tenth of mixed_precision's bf16 tolerance (0.02).
LOSS_ATOL = 2e-3


def conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's 4-d parameters (convolution weights)."""
    return [p for p in model.parameters() if p.dim() == 4]


class ChannelsLast(Optimization):
    """Model and input images in channels_last (NHWC) memory format; the same numbers in another layout."""

    name = "channels_last"
    requires = VisionAPI
    before = ("ddp", "zero", "torch_compile")  # they wrap or trace the model whose tensors this re-strides
    description = "model and images in torch.channels_last; first-step gradients equal the NCHW run's."

    def apply(self, run: VisionAPI) -> None:
        if run.model is not run.raw_model:
            raise ValueError("channels_last must be applied to the plain model: list it before ddp / zero / "
                             "torch_compile in the case's plugins")
        run.set_memory_format(torch.channels_last)
        weights = conv_weights(run.raw_model)
        run.facts["channels_last"] = {
            "conv_weights": len(weights),
            "channels_last_weights": sum(w.is_contiguous(memory_format=torch.channels_last) for w in weights),
            "inputs_channels_last": all(x.is_contiguous(memory_format=torch.channels_last) for x, _ in run.batches),
        }

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        facts = optimized["facts"]["channels_last"]
        checks = [Check("layout_in_effect",
                        facts["conv_weights"] > 0 and facts["inputs_channels_last"]
                        and facts["channels_last_weights"] == facts["conv_weights"],
                        facts, "every conv weight and every input batch channels_last")]
        mismatch = precision_mismatch("grads_equal_nchw", baseline, optimized)
        if mismatch:
            return checks + [mismatch]
        noise = noise_of(baseline, "grads")
        if optimized.get("precision") in ("bfloat16", "float16"):
            grads = tensors_check("grads_equal_nchw", baseline["grads"], optimized["grads"], HALF_GRAD_RTOL,
                                  GRAD_ATOL, HALF_GRAD_ATOL_OF_MAX, noise=noise)
        else:
            grads = tensors_check("grads_equal_nchw", baseline["grads"], optimized["grads"], GRAD_RTOL, GRAD_ATOL,
                                  GRAD_ATOL_OF_MAX, noise=noise)
        return checks + [grads, loss_check("loss_close_to_nchw", baseline, optimized, LOSS_ATOL)]


@hookimpl
def register_optimizations(register):
    register(ChannelsLast)
