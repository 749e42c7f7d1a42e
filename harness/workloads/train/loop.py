"""`TrainLoop`: the training step every training workload shares, implementing `TrainAPI`.

A workload gives it a model whose `forward(inputs, targets)` returns `(outputs, loss)` and the global batches;
the loop is nanoGPT's: `knobs.micro_batches` micro-batches with `no_sync` on all but the last, each forward
under autocast, each loss / k scaled by a GradScaler (disabled unless fp16), then one optimizer step. Its
`outputs()` is the correctness pass every training optimization's check reads (`TrainAPI`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from harness.core.memory import saved_for_backward, tensor_bytes
from harness.core.optimization import ParamError
from harness.core.workload import Run, RunContext
from harness.models import precision
from harness.models.accounting import train_state_bytes, zero_bytes
from harness.workloads.train.knobs import TrainKnobs


def no_sync(model: nn.Module):
    """DDP's `no_sync()` (skip the gradient all-reduce of this backward), or nothing for other models."""
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


def adamw_kwargs(lr: float, device_type: str, impl: str | None) -> dict[str, Any]:
    """AdamW's arguments (nanoGPT's betas and weight decay) with its implementation: `impl` (fused / foreach /
    for_loop, chosen by optimizer_impl, which checks it exists here), else fused on CUDA and foreach elsewhere
    where this torch has them (feature-detected)."""
    kwargs: dict[str, Any] = {"lr": lr, "betas": (0.9, 0.95), "weight_decay": 0.1}
    if impl is not None:
        return {**kwargs, "fused": True} if impl == "fused" else {**kwargs, "foreach": impl == "foreach"}
    signature = inspect.signature(torch.optim.AdamW).parameters
    if device_type == "cuda" and "fused" in signature:
        kwargs["fused"] = True
    elif "foreach" in signature:
        kwargs["foreach"] = True
    return kwargs


def adamw_name(kwargs: dict[str, Any]) -> str:
    """adamw(fused) / adamw(foreach) / adamw(for_loop) / adamw (torch's default) for `adamw_kwargs`' result."""
    if kwargs.get("fused"):
        return "adamw(fused)"
    return "adamw(foreach)" if kwargs.get("foreach") else "adamw(for_loop)" if "foreach" in kwargs else "adamw"


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A CPU fp32 copy of the whole tensor (gathers a DTensor shard; a collective, so every rank calls it)."""
    t = t.full_tensor() if hasattr(t, "full_tensor") else t
    return t.detach().float().cpu().clone()


class TrainLoop(Run):
    """A model, an AdamW optimizer and fixed global batches; `step()` trains on the next batch (`TrainAPI`).

    Subclass it: build the model (`forward(inputs, targets) -> (outputs, loss)`, in train mode) and the global
    batches [(inputs, targets)] on the CPU, call `super().__init__`, set `units`; override `blocks()` and,
    to report model FLOP/s and MFU, `flops_per_step()`."""

    ctx: RunContext
    info: dict[str, Any]
    knobs: TrainKnobs
    device: torch.device
    model: nn.Module
    raw_model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    facts: dict[str, Any]
    global_batch: int

    def __init__(self, ctx: RunContext, model: nn.Module, global_batches: list[tuple[torch.Tensor, torch.Tensor]],
                 lr: float, tf32: bool = False):
        super().__init__(ctx)
        self.device, self.lr = torch.device(ctx.device), lr
        self.knobs = TrainKnobs(tf32=tf32)
        self.no_scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        self.raw_model = model
        self.model = model
        self.optimizer = self.make_optimizer(model.parameters())
        self.world = 1  # ranks sharing the global batch
        self.saved: dict[int, int] | None = None  # storage -> bytes saved for backward, while counted
        self.grad_bytes = 0
        self.facts = {}
        self.global_batches = global_batches  # [(inputs, targets)] * steps, each [B, ...] on the CPU
        self.global_batch = global_batches[0][0].size(0)
        self.batches = [(x.to(self.device), y.to(self.device)) for x, y in global_batches]
        self.steps_done = 0
        self.last_loss: torch.Tensor | None = None
        self.info.update({"params": sum(p.numel() for p in model.parameters()),
                          "optimizer": adamw_name(self.optimizer_kwargs()), "autocast": None})
        if self.device.type == "cuda":  # the fp32 baseline's precision is part of the case (rule T10)
            self.info["tf32"] = tf32

    def blocks(self) -> list[nn.Module]:
        """The model's repeated blocks: its `blocks` attribute (the built-in GPT's, an hf: model's decoder
        layers); a workload whose model names them otherwise overrides this."""
        return list(getattr(self.raw_model, "blocks", []))

    def flops_per_step(self) -> float | None:
        """Model FLOPs of one training step (forward + backward), for model TFLOP/s and MFU; None: unknown."""
        return None

    def keep_for_backward(self, tensor: torch.Tensor) -> None:
        """Count `tensor`'s storage among the bytes kept for backward while `outputs()` counts them."""
        if self.saved is not None and torch.is_grad_enabled():
            self.saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()

    def make_optimizer(self, params, optimizer_class: type = torch.optim.AdamW) -> torch.optim.Optimizer:
        """AdamW over `params`, fused where the device supports it, else foreach (feature-detected)."""
        return optimizer_class(params, **self.optimizer_kwargs())

    def optimizer_kwargs(self) -> dict[str, Any]:
        """`adamw_kwargs` for this run's learning rate, device and `knobs.optimizer_impl`."""
        return adamw_kwargs(self.lr, self.device.type, self.knobs.optimizer_impl)

    def shard_batches(self, rank: int, world_size: int) -> None:
        """Keep this rank's slice of each global batch; the global batch (and so the result) is unchanged."""
        if self.global_batch % world_size:
            raise ParamError("batch", f"global batch {self.global_batch} does not split over {world_size} ranks; "
                                      f"use a multiple of {world_size}")
        per = self.global_batch // world_size
        self.batches = [(x[rank * per:(rank + 1) * per].to(self.device), y[rank * per:(rank + 1) * per].to(self.device))
                        for x, y in self.global_batches]
        self.world = world_size
        self.distributed = True
        self.info["local_batch"] = per

    @property
    def scaler(self) -> torch.amp.GradScaler:
        """The loss scaler of this run: the knob's, else a disabled one (scale() and step() pass through)."""
        return self.knobs.grad_scaler or self.no_scaler

    def train_step(self, x: torch.Tensor, y: torch.Tensor, keep_grads: bool = False) -> torch.Tensor:
        """nanoGPT's step on a local batch x, y: `knobs.micro_batches` = k micro-batches, each forward under
        autocast, its loss / k scaled and backward (DDP's all-reduce on the last one only), then one optimizer
        step (with `keep_grads`, returns before it, gradients kept). Returns the batch's mean loss, detached.
        `saved` then holds the largest micro-batch's saved-for-backward bytes: each micro-batch's are freed by
        its backward before the next forward, so that is the peak, not the sum."""
        k = self.knobs.micro_batches
        if x.size(0) % k:  # the local batch under DDP: global batch / world_size
            raise ParamError("micro_batches", f"the local batch of {x.size(0)} does not split into {k} "
                                              f"micro-batches; make batch a multiple of world_size x {k}")
        if k > 1:
            self.info["micro_batch"] = x.size(0) // k
        total, peak = torch.zeros((), device=x.device), {}
        for i, (xm, ym) in enumerate(zip(x.chunk(k), y.chunk(k))):
            if self.saved is not None:
                self.saved.clear()
            with precision.tf32_matmuls(self.device.type, self.knobs.tf32), \
                    (contextlib.nullcontext() if i == k - 1 else no_sync(self.model)):
                with precision.autocast(self.device.type, self.knobs.autocast_dtype):
                    _, loss = self.model(xm, ym)
                loss = loss / k
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
            if self.saved is not None and sum(self.saved.values()) > sum(peak.values()):
                peak = dict(self.saved)
        if self.saved is not None:
            self.saved.clear()
            self.saved.update(peak)
        if not keep_grads:
            self.optimizer_step()
        return total

    def optimizer_step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1

    def step(self) -> None:
        x, y = self.batches[self.steps_done % len(self.batches)]
        self.last_loss = self.train_step(x, y).detach()

    def outputs(self) -> dict[str, Any]:
        """K steps from the fresh state: losses per step, first-step gradients, final parameters (CPU fp32)."""
        losses, grads = [], {}
        for i, (x, y) in enumerate(self.batches):
            if i == 0:  # the run's first work: its time, compile and lazy init included, is first_call_s
                grads, loss = self.first_step(x, y)
            else:
                loss = self.train_step(x, y)
            losses.append(self.global_loss(loss))
        params = {n: full_tensor(p) for n, p in self.raw_model.named_parameters()}
        matmuls = precision.matmul_precision(self.device.type, self.knobs.autocast_dtype, self.knobs.tf32)
        out = {"losses": losses, "grads": grads, "params": params, "loss": losses[-1], "precision": matmuls,
               "device": self.device.type, "activation_bytes": self.info.get("activation_bytes"),
               "memory": self.memory(), "memory_estimate": self.memory_estimate(), "facts": self.facts}
        out["first_batch_loss_after"] = self.first_batch_loss()  # after memory(): FSDP gathers weights for it
        if self.scaler.is_enabled():
            out["skipped_steps"] = self.skipped_steps()
        return out

    def first_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The first step of `outputs()`, timed for `first_call_s`: autograd's saved-for-backward bytes
        (harness.core.memory.saved_for_backward) counted while `saved` points at them (activation_checkpointing
        adds the block inputs its checkpoint keeps), the unscaled first-step gradients kept, then the update."""
        counting = saved_for_backward(self.raw_model) if self.knobs.count_activations else None
        try:
            with counting or contextlib.nullcontext() as self.saved:
                loss, forward_backward_s = self.synced(functools.partial(self.train_step, x, y, keep_grads=True))
            if self.saved is not None:
                self.info["activation_bytes"] = sum(self.saved.values())
        finally:
            self.saved = None
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        grads = {n: full_tensor(p.grad) / scale for n, p in self.raw_model.named_parameters() if p.grad is not None}
        self.grad_bytes = tensor_bytes(p.grad for p in self.raw_model.parameters())
        _, update_s = self.synced(self.optimizer_step)
        if self.first_call_s is None:
            self.first_call_s = forward_backward_s + update_s
        return grads, loss

    @torch.no_grad()
    def first_batch_loss(self) -> float:
        """The loss on the first batch again, after the K steps: below the first step's loss if the run trained
        (the same batch, so batch-to-batch variation cannot fake it). The plain module, so no recompile."""
        x, y = self.batches[0]
        with precision.tf32_matmuls(self.device.type, self.knobs.tf32), \
                precision.autocast(self.device.type, self.knobs.autocast_dtype):
            _, loss = self.raw_model(x, y)
        for module in self.raw_model.modules():  # FSDP2 without reshard-after-forward keeps them gathered
            if hasattr(module, "reshard"):
                module.reshard()
        return self.global_loss(loss)

    def global_loss(self, loss: torch.Tensor) -> float:
        """The loss over the global batch: the mean of the ranks' local means (equal slices)."""
        loss = loss.detach().float()
        if self.distributed and dist.is_initialized():
            loss = loss.clone()
            dist.all_reduce(loss)
            loss /= self.world
        return loss.item()

    def skipped_steps(self) -> int:
        """Optimizer steps the GradScaler skipped (inf/nan gradients): steps taken minus Adam's step count."""
        states = [s for s in self.optimizer.state.values() if "step" in s]
        taken = int(states[0]["step"]) if states else 0
        return self.steps_done - taken

    def memory(self) -> dict[str, int]:
        """Bytes on this rank of weights, gradients and optimizer states (`accounting.train_state_bytes`); the
        gradients are those counted after the first backward of `outputs()` (0 before it)."""
        return train_state_bytes(self.raw_model, self.optimizer, self.grad_bytes)

    def memory_estimate(self) -> dict[str, Any]:
        """Per-rank bytes at rest by the ZeRO formulas (`harness.models.accounting.zero_bytes`) for this run."""
        params = list(self.raw_model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        return zero_bytes(sum(p.numel() for p in params), trainable, self.world, self.knobs.sharding)

    def extra_metrics(self, median_s: float) -> dict[str, Any]:
        """Each unit per second (tokens/s, samples/s, ...), model TFLOP/s and MFU where `flops_per_step` is
        known (recompute not counted), the final loss, the ZeRO memory estimate."""
        out: dict[str, Any] = {f"{unit}_per_s": n / median_s for unit, n in self.units.items()}
        out.update(loss=self.global_loss(self.last_loss) if self.last_loss is not None else None,
                   memory_estimate=self.memory_estimate(), mfu=None)
        flops = self.flops_per_step()
        if flops:
            flops_s = flops / median_s
            out["model_tflops"] = flops_s / 1e12
            peak = self.ctx.env.get("peak") or {}
            key = precision.peak_key(self.device.type, self.knobs.autocast_dtype, self.knobs.tf32)
            if peak.get(key):
                out["mfu"] = flops_s / self.world / peak[key] if self.distributed else flops_s / peak[key]
                out["mfu_peak"] = key
        if self.distributed:
            out.update({f"{unit}_per_s_per_process": n / median_s / self.world for unit, n in self.units.items()
                        if unit == "tokens"})
            out["world_size"] = self.world
        if self.scaler.is_enabled():
            out["skipped_steps"] = self.skipped_steps()
        return out
