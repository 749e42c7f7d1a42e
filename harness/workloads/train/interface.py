"""`TrainAPI`: what a training optimization may touch on a training run, and nothing else.

A workload whose run implements it (the built-in `train` and `vision` runs subclass `TrainLoop`, which does)
gets every optimization that declares `requires = TrainAPI`: mixed_precision, activation_checkpointing,
gradient_accumulation, optimizer_impl, torch_compile, ddp, zero. `harness validate` refuses such an
optimization on a workload whose run lacks a member (file:line, exit 2).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from harness.core.workload import RunContext
from harness.workloads.train.knobs import TrainKnobs


class TrainAPI(Protocol):
    """A training run: forward, loss, backward and one optimizer step on fixed batches.

    Its `outputs()` returns at least: `losses` (per step of the correctness pass, global batch), `grads` and
    `params` (first-step gradients and final parameters by `raw_model`'s names, CPU fp32), `loss` (the last),
    `precision` (what the matmuls ran in: "fp32", "tf32", "bfloat16", "float16"), `device` ("cpu", "cuda"),
    `activation_bytes` (saved-for-backward bytes of the first forward, or None), `skipped_steps` (with a
    GradScaler), `first_batch_loss_after`, `memory` and `memory_estimate`, `facts` (what the optimizations put
    in `facts`). The optimizations' checks compare those of the two sides.
    """

    ctx: RunContext  # device, environment, seed, rank and world size; `ctx.cache_path` for costly artifacts
    info: dict[str, Any]  # facts to report beside the figures (what was applied, counts)
    knobs: TrainKnobs  # precision, loss scaling, micro-batches, optimizer implementation, ZeRO stage: TrainKnobs
    device: torch.device  # where the run's model and batches live
    model: nn.Module  # what the step calls: wrap it (DDP, FSDP, torch.compile, peft) and assign it back
    raw_model: nn.Module  # the plain model: parameter names every check uses; change it in place (LoRA, layout)
    optimizer: torch.optim.Optimizer  # replace it with make_optimizer (LoRA's trainable subset, ZeRO's wrapper)
    batches: list[tuple[torch.Tensor, torch.Tensor]]  # this rank's (inputs, targets) per step, on `device`
    facts: dict[str, Any]  # what an optimization measured in apply() for its check: outputs()["facts"]
    global_batch: int  # examples per step, summed over ranks

    def blocks(self) -> list[nn.Module]:
        """The model's repeated blocks (transformer blocks, residual stages): what activation_checkpointing
        recomputes and FSDP shards one by one."""

    def make_optimizer(self, params: Any, optimizer_class: type = torch.optim.AdamW) -> torch.optim.Optimizer:
        """The run's optimizer (AdamW, its learning rate and implementation) over `params`."""

    def optimizer_kwargs(self) -> dict[str, Any]:
        """The optimizer's arguments (learning rate, betas, weight decay, fused / foreach) for this run."""

    def shard_batches(self, rank: int, world_size: int) -> None:
        """Keep this rank's slice of each global batch (DDP, FSDP); the global batch is unchanged."""

    def keep_for_backward(self, tensor: torch.Tensor) -> None:
        """Count `tensor` among the bytes kept for backward while activations are counted (a checkpoint keeps
        its input for the recompute, outside autograd's own saved tensors); nothing otherwise."""


TrainAPI.workload_kind = "training"


class LMTrainAPI(TrainAPI, Protocol):
    """`TrainAPI` on a causal language model: `raw_model(tokens)` returns logits [B, T, V] (and `(logits, loss)`
    with targets), `raw_model.num_params()` counts its parameters, `batches` hold token ids [B, T]. What LoRA's
    adapters and its checks need; the `train` workload implements it, an image classifier does not."""

    args: Any  # the model's shape: vocab_size, block_size, n_layer, ... (ModelArgs, or an hf: model's HFArgs)


LMTrainAPI.workload_kind = "training"
