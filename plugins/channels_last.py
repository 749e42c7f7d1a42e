"""channels_last: the model's 4-d weights and the input images in NHWC memory order (`torch.channels_last`).

The tensors keep their shapes and values; only their strides change, so the convolution and normalisation
kernels (oneDNN on CPU, cuDNN on CUDA) take their NHWC paths, which on GPUs avoid layout transposes around tensor
core kernels. It goes through `VisionAPI.set_memory_format`, which also keeps the slices `shard_batches` makes
(DDP) in that layout; `harness validate` refuses it on a workload without images (the LM `train`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from harness.api import Check, Optimization, VisionAPI, hookimpl, loss_check, noise_of, precision_mismatch

# The NHWC kernels compute the same sums in another order (other blockings of the C x kh x kw reduction in
# forward, of the B x H x W one for weight gradients): the first forward, before any update, is continuous in
# that round-off, so the first step's loss agrees to fp32 round-off. Measured on CPU (32 x 32, batch 8-16,
# 4-12 seeds): |diff| / loss <= 8e-7 (resnet_tiny, resnet18 with BatchNorm or GroupNorm); 1e-5 is allowed.
# A loss scaled by 1.01 fails it by 1000x.
FIRST_LOSS_RTOL = 1e-5
# Gradients are not continuous in it: a ReLU whose input lies within round-off of 0 (about one in 1e6
# activations) can flip, and that element's gradient then takes the other branch, into every weight gradient
# below it. So gradients are compared as one vector, by relative L2 error |g_o - g_b| / |g_b| over all tensors,
# not element by element. Measured on CPU: 2e-6 without a flip (resnet_tiny; resnet18 GroupNorm, 4 seeds);
# resnet18 BatchNorm flips one ReLU in most seeds: up to 7.7e-3 over 18 seeds (32 and 64 px). 3e-2 is
# allowed; other weights (another seed) differ by ~1.
GRAD_REL_L2 = 3e-2
# Under bf16 / fp16 autocast on both sides a different fp32 partial sum rounds a half-precision activation one
# ulp the other way (2^-8 relative for bf16) and many ReLUs flip: gradients differ by a relative L2 of 0.09
# (GroupNorm, resnet_tiny) to 0.3 (resnet18 BatchNorm), so they are not compared, and the first loss is
# compared at half precision: measured |diff| / loss <= 3e-3 (resnet18 bf16, 4 seeds).
HALF_FIRST_LOSS_RTOL = 2e-2
# AdamW's first updates are ~lr x sign(g), so round-off on a near-zero gradient moves that weight by up to
# 2 lr per step, and the trajectories part slowly: the loss after K steps is compared loosely, at
# mixed_precision's bf16 tolerance. Measured |diff| after 3 steps: <= 1.5e-3 at lr 1e-4 (resnet18 BatchNorm,
# 12 seeds; 1.3e-2 with bf16 on both sides), 1.6e-2 at lr 1e-3.
LOSS_ATOL = 0.02
NOISE_FACTOR = 4  # on CUDA, tolerances are at least 4 x the baseline's own repeat-to-repeat difference


def conv_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """The model's 4-d parameters (convolution weights)."""
    return [p for p in model.parameters() if p.dim() == 4]


class ChannelsLast(Optimization):
    """Model and input images in channels_last (NHWC) memory format; the same numbers in another layout."""

    name = "channels_last"
    requires = VisionAPI
    before = ("ddp", "zero", "torch_compile")  # they wrap or trace the model whose tensors this re-strides
    description = "model and images in torch.channels_last; first-step loss and gradients equal the NCHW run's."

    def apply(self, run: VisionAPI) -> None:
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
        mismatch = precision_mismatch("first_loss_equal_nchw", baseline, optimized)
        if mismatch:
            return checks + [mismatch]
        half = optimized.get("precision") in ("bfloat16", "float16")
        checks.append(first_loss_check(baseline, optimized, HALF_FIRST_LOSS_RTOL if half else FIRST_LOSS_RTOL))
        if not half:
            checks.append(relative_l2_check("grads_close_nchw", baseline["grads"], optimized["grads"], GRAD_REL_L2,
                                            noise_of(baseline, "grads")))
        return checks + [loss_check("loss_close_to_nchw", baseline, optimized, LOSS_ATOL)]


def first_loss_check(baseline: dict[str, Any], optimized: dict[str, Any], rtol: float) -> Check:
    """The loss of the first step (the forward before any update) of both sides within `rtol` of the baseline's,
    or NOISE_FACTOR x the baseline's repeat difference of the final loss where the worker measured one (CUDA)."""
    b, o = baseline["losses"][0], optimized["losses"][0]
    noise = (baseline.get("noise") or {}).get("loss")
    tol = max(rtol * abs(b), NOISE_FACTOR * noise) if noise is not None else rtol * abs(b)
    text = f"rtol {rtol:g}" + (f" or {NOISE_FACTOR} x the baseline's repeat difference" if noise is not None else "")
    return Check("first_loss_equal_nchw", abs(o - b) <= tol, {"baseline": b, "optimized": o, "abs_diff": abs(o - b)},
                 text)


def relative_l2_check(name: str, baseline: dict[str, torch.Tensor], optimized: dict[str, torch.Tensor], tol: float,
                      noise: dict[str, float] | None = None) -> Check:
    """|optimized - baseline| / |baseline| over all tensors as one vector within `tol`, the worst tensor's own
    relative error reported; on CUDA at least NOISE_FACTOR x a bound of the baseline's repeat difference (each
    tensor's max |diff| on every element)."""
    text = f"relative L2 over all tensors <= {tol:g}"
    bad = sorted(k for k in baseline.keys() | optimized.keys()
                 if k not in baseline or k not in optimized or baseline[k].shape != optimized[k].shape)
    if bad:
        return Check(name, False, {"mismatched_tensors": bad[:5]}, text)
    diff = {k: float((optimized[k] - b).norm()) for k, b in baseline.items()}
    size = {k: float(b.norm()) for k, b in baseline.items()}
    norm = math.hypot(*size.values()) or 1.0
    error, limit = math.hypot(*diff.values()) / norm, tol
    if noise:
        repeat = math.hypot(*(math.sqrt(baseline[k].numel()) * v for k, v in noise.items() if k in baseline))
        limit, text = max(tol, NOISE_FACTOR * repeat / norm), text + f" or {NOISE_FACTOR} x the baseline's repeat bound"
    worst = max(diff, key=lambda k: diff[k] / (size[k] or 1e-30), default="")
    values = {"relative_l2": error, "worst": worst, "worst_relative_l2": diff[worst] / (size[worst] or 1e-30) if worst
              else 0.0, "tensors": len(baseline)}
    return Check(name, error <= limit, values, text)


@hookimpl
def register_optimizations(register):
    register(ChannelsLast)
