"""`TrainKnobs`: the typed settings a training optimization sets on a run; the training loop reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from harness.core.workload import Knobs


@dataclass
class TrainKnobs(Knobs):
    """What a training optimization may set on a training run (`TrainAPI.knobs`); `TrainLoop` reads them."""

    tf32: bool = field(default=False, metadata={
        "help": "TF32 matmuls on CUDA, set around each step (tf32; the workload's `tf32` field sets the default)"})
    autocast_dtype: torch.dtype | None = field(default=None, metadata={
        "help": "forward and loss under torch.autocast in this dtype; None: the weights' dtype (mixed_precision)"})
    grad_scaler: torch.amp.GradScaler | None = field(default=None, metadata={
        "help": "loss scaling (fp16 mixed_precision); None: a disabled GradScaler, which changes nothing"})
    micro_batches: int = field(default=1, metadata={
        "help": "k: the local batch split in k micro-batches, loss / k each, DDP's all-reduce on the last only, "
                "one optimizer step (gradient_accumulation)"})
    optimizer_impl: Literal["fused", "foreach", "for_loop"] | None = field(default=None, metadata={
        "help": "AdamW's implementation: fused / foreach / for_loop; None: the device's best (optimizer_impl)"})
    sharding: Literal["zero1", "fsdp_grad_op", "fsdp_full"] | None = field(default=None, metadata={
        "help": "ZeRO stage the memory formula applies: zero1 / fsdp_grad_op / fsdp_full (zero)"})
    count_activations: bool = field(default=True, metadata={
        "help": "count saved-for-backward bytes in outputs(); off where the hooks would change the step "
                "(torch_compile: graph breaks; FSDP: gathered weights)"})
