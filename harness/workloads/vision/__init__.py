"""The `vision` workload: one training step of an image classifier on fixed synthetic image batches.

Written against `harness.api` alone, as a third-party workload would be: `VisionRun` subclasses `TrainLoop`,
so every `TrainAPI` optimization (mixed_precision, activation_checkpointing, gradient_accumulation,
optimizer_impl, torch_compile, ddp, zero) applies to it unchanged, and it implements `VisionAPI`
(interface.py) for those that only make sense on images (channels_last). The model is a built-in ResNet
(torchvision's architecture, no torchvision needed), `torchvision:NAME` or a user's `py:module:factory`
(models.py); the images are seeded class patterns plus noise (data.py), so a few steps really lower the loss.
"""

from __future__ import annotations

from harness.api import Workload, hookimpl
from harness.workloads.vision.interface import VisionAPI
from harness.workloads.vision.run import VisionRun
from harness.workloads.vision.spec import VisionSpec

__all__ = ["VisionAPI", "VisionRun", "VisionSpec", "VisionWorkload"]


class VisionWorkload(Workload):
    """Train an image classifier: forward, cross-entropy, backward, AdamW step, on seeded synthetic images."""

    name = "vision"
    kind = "training"
    description = "One training step (forward + backward + AdamW) of an image classifier on a fixed batch."
    Spec = VisionSpec
    run_class = VisionRun

    def finish(self, run: VisionRun) -> None:
        run.info["memory_estimate"] = run.memory_estimate()


@hookimpl
def register_workloads(register):
    register(VisionWorkload)
