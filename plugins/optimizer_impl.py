"""AdamW implementation: one fused kernel, multi-tensor (foreach) ops, or a Python loop over parameters.

The three compute the same update; they differ in how many kernels a step launches and how many times the
parameters and states are read: the for-loop issues ~a dozen ops per parameter tensor, foreach the same ops
over lists of tensors, fused one kernel per group of tensors that reads each tensor once. The case's baseline
applies this plugin with another `impl` (`baseline: [{optimizer_impl: {impl: foreach}}]`), so the speedup is
that of the optimizer implementation alone. Without this plugin a run uses fused on CUDA, foreach elsewhere.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness.api import Check, Optimization, TrainAPI, hookimpl
from harness.core.checks import loss_check, noise_of, tensors_check
from harness.workloads.train import adamw_name

# The implementations evaluate the same formula with other op orders (fused on CPU computes the step in one
# loop per element, foreach / for-loop as separate tensor ops), so parameters agree to fp32 round-off per
# step; AdamW's division by sqrt(v) amplifies that where a gradient is near zero. Measured on nano after 3
# steps (lr 1e-3): max |diff| 1.8e-6 (fused vs foreach, a bias), 0 (for_loop vs foreach); losses equal. An lr
# of 1.1e-3 instead moves parameters by 2.8e-3, far outside. The tolerance is DDP's, for the same reason.
PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-5
LOSS_ATOL = 1e-5


@dataclass
class OptimizerImplParams:
    """Parameters of optimizer_impl."""

    impl: Literal["fused", "foreach", "for_loop"] = field(
        default="fused",
        metadata={
            "help": "AdamW implementation: fused (one kernel), foreach (multi-tensor ops) or for_loop (per tensor); "
            "give the case's baseline entry another one"
        },
    )


def impl_works(impl: str, device_type: str) -> str | None:
    """None if `torch.optim.AdamW` with this implementation takes a step on `device_type`, else why not."""
    if impl == "for_loop":
        return None
    if impl not in inspect.signature(torch.optim.AdamW).parameters:
        return f"this PyTorch's AdamW has no '{impl}' argument"
    try:
        p = torch.nn.Parameter(torch.ones(4, device=device_type))
        p.grad = torch.ones_like(p)
        torch.optim.AdamW([p], **{impl: True}).step()
    except (RuntimeError, ValueError) as exc:
        return f"AdamW({impl}=True) does not run on {device_type}: {exc}"
    return None


class OptimizerImpl(Optimization):
    """Pick AdamW's implementation (fused / foreach / for_loop); the same update as the baseline's."""

    name = "optimizer_impl"
    before = ("zero",)  # zero wraps the plain AdamW this rebuilds
    requires = TrainAPI
    description = "AdamW fused, foreach or for-loop; parameters after K steps equal the baseline's implementation."
    Params = OptimizerImplParams

    def supports(self, env: dict[str, Any]) -> str | None:
        return impl_works(self.params.impl, str(env.get("device", "cpu")).split(":")[0])

    def apply(self, run: TrainAPI) -> None:  # `before` put it ahead of zero, which wraps the plain AdamW
        params = [p for group in run.optimizer.param_groups for p in group["params"]]
        run.knobs.optimizer_impl = self.params.impl
        run.optimizer = run.make_optimizer(params)
        run.info["optimizer"] = adamw_name(run.optimizer_kwargs())

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        return [
            tensors_check(
                "params_equal_baseline_impl", baseline["params"], optimized["params"], PARAM_RTOL, PARAM_ATOL,
                noise=noise_of(baseline, "params")),
            loss_check("loss_equal_baseline_impl", baseline, optimized, LOSS_ATOL),
        ]


@hookimpl
def register_optimizations(register):
    register(OptimizerImpl)
