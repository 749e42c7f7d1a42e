"""Gradient accumulation: forward + backward k micro-batches of the global batch, then one optimizer step.

Each micro-batch's loss is scaled by 1/k, so the summed gradients are the gradient of the mean loss over the
whole batch and the step equals the one-big-batch step: the same training at 1/k of the activation memory.
Under DDP every micro-batch but the last runs in `model.no_sync()`, so gradients are all-reduced once per step.
The loop is the training workload's own step (`TrainRun.train_step`, nanoGPT's); this plugin sets its
`micro_batches` knob and checks the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.api import Check, Optimization, ParamError, TrainAPI, hookimpl
from harness.core.checks import loss_check, noise_of, precision_mismatch, tensors_check

# Summing k micro-batch gradients adds the same terms in another order than one big reduction: in fp32 the
# first-step gradients differ by round-off (measured max |diff| 3e-8 on nano, 7e-9 on `cpu`; gradients up to
# 0.14). AdamW's first update is ~lr * g / |g|, so where a gradient is near zero round-off can move that
# element's update by a fraction of lr: measured max |diff| of parameters after 3 steps at lr 1e-3: 2.5e-6 on
# nano, 4.2e-5 on `cpu` (3.4M parameters, more of them near zero). atol 1e-4 (a tenth of lr) allows that;
# an optimizer step per micro-batch or another lr moves parameters by ~lr, 1e-3, and fails.
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6
PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-4
LOSS_ATOL = 1e-4
# Under autocast each micro-batch's weight gradient is rounded to bf16/fp16 before the fp32 sum, so gradients
# agree to half-precision round-off (measured max |diff| 5e-4 bf16, 6e-5 fp16) and AdamW can flip the sign of
# a near-zero update, moving a parameter by up to 2 lr per step (measured 3e-3 after 3 steps): parameters are
# not compared then; gradients at half-precision tolerance and the final loss (measured |diff| 4e-6) are.
LOW_GRAD_RTOL, LOW_GRAD_ATOL = 1e-2, 2e-3
LOW_LOSS_ATOL = 1e-3
# A missing 1/k scale makes the gradients k times larger (fails the gradient check; AdamW is almost
# scale-invariant, so parameters barely notice); an optimizer step per micro-batch fails the parameter check.


@dataclass
class AccumulationParams:
    """Parameters of gradient_accumulation."""

    micro_batches: int = field(
        default=4,
        metadata={"help": "k: micro-batches per optimizer step (each of batch / k sequences, per rank under DDP)"},
    )

    def __post_init__(self):
        if self.micro_batches < 1:
            raise ParamError("micro_batches", f"micro_batches must be >= 1 (got {self.micro_batches})")


class GradientAccumulation(Optimization):
    """Accumulate gradients over k micro-batches of the global batch; one AdamW step on their mean."""

    name = "gradient_accumulation"
    requires = TrainAPI
    description = "k micro-batches (loss / k each), one optimizer step; parameters equal the one-big-batch run."
    Params = AccumulationParams

    def validate(self, spec: Any, plugins: list) -> None:
        k, ranks = self.params.micro_batches, max(o.processes() for o in plugins)
        batch = getattr(spec, "batch", None)  # a workload without a `batch` field: train_step checks the split
        if isinstance(batch, int) and batch % (k * ranks):
            raise ParamError("micro_batches", f"the batch of {spec.batch} does not split into {ranks} rank(s) x {k} "
                                              "equal micro-batches; make batch a multiple of their product")
        if any(o.name == "zero" and o.params.stage != "zero1" for o in plugins):
            raise ParamError("", "gradient_accumulation does not combine with FSDP here (it would "
                                 "reduce-scatter every micro-batch); use it alone, with ddp or zero1")

    def apply(self, run: TrainAPI) -> None:
        k = self.params.micro_batches  # validate() checked it splits the batch and that no FSDP is on this side
        run.knobs.micro_batches = k  # TrainRun.train_step: loss / k per micro-batch, no_sync on all but the last
        run.info["micro_batches"] = k

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        mismatch = precision_mismatch("params_equal_one_big_batch", baseline, optimized)
        if mismatch:
            return [mismatch]
        if baseline.get("precision") == "fp32":
            checks = [
                tensors_check(
                    "params_equal_one_big_batch", baseline["params"], optimized["params"], PARAM_RTOL, PARAM_ATOL,
                    noise=noise_of(baseline, "params")),
                tensors_check("first_step_grads_equal", baseline["grads"], optimized["grads"], GRAD_RTOL, GRAD_ATOL,
                              noise=noise_of(baseline, "grads")),
                loss_check("loss_equal_one_big_batch", baseline, optimized, LOSS_ATOL),
            ]
        else:  # bf16 / fp16 autocast on both sides (tf32 too: its matmul inputs are rounded the same way)
            checks = [
                tensors_check(
                    "first_step_grads_equal", baseline["grads"], optimized["grads"], LOW_GRAD_RTOL, LOW_GRAD_ATOL,
                    noise=noise_of(baseline, "grads")),
                loss_check("loss_equal_one_big_batch", baseline, optimized, LOW_LOSS_ATOL),
            ]
        b, o = baseline.get("activation_bytes"), optimized.get("activation_bytes")
        if b and o:
            k = self.params.micro_batches
            checks.append(
                Check(
                    "activation_bytes_lower",
                    o < b or k == 1,
                    {"baseline": b, "optimized": o, "ratio": o / b, "micro_batches": k},
                    "saved-for-backward bytes of the largest micro-batch < those of the whole batch",
                )
            )
        return checks


@hookimpl
def register_optimizations(register):
    register(GradientAccumulation)
