"""`VisionAPI`: `TrainAPI` plus what only an image workload has, the memory layout of its images and weights.

An optimization that declares `requires = VisionAPI` (channels_last) applies to the `vision` workload and to
any other whose run implements it; `harness validate` refuses it on the LM `train` workload (file:line, exit 2).
Every `TrainAPI` optimization applies to a `VisionAPI` run unchanged.
"""

from __future__ import annotations

from typing import Protocol

import torch

from harness.api import TrainAPI


class VisionAPI(TrainAPI, Protocol):
    """A training run on image batches: `batches` are (images [B, 3, H, W], labels [B]); the model's
    convolutions see them in `memory_format`."""

    image_size: int  # H = W of the images
    memory_format: torch.memory_format  # the layout of the 4-d weights and of every input batch

    def set_memory_format(self, memory_format: torch.memory_format) -> None:
        """Put the model's 4-d parameters and buffers and every input batch (those `shard_batches` makes later
        too) in `memory_format`, in place: parameter names and the optimizer's references are unchanged."""


VisionAPI.workload_kind = "training"
