"""The training workload: one forward + loss + backward + optimizer step of a causal LM on fixed batches.

The model is a built-in preset, a trained reference, or a user's local Hugging Face model (`hf:PATH`, behind
`harness.hf.HFCausalLM`: the same `forward(idx, targets)`, decoder layers as `blocks`, dropout off).

Optimizations change a `TrainRun` by setting its typed knobs (`TrainKnobs`: precision, loss scaling,
micro-batches, optimizer implementation, ZeRO stage, activation counting), by wrapping `model` (DDP / FSDP /
torch.compile / peft; `raw_model` stays the plain model, whose parameter names every check uses), by rebuilding
`optimizer` with `make_optimizer`, and by slicing the local batch (`shard_batches`). The step is nanoGPT's:
micro-batches with `no_sync` on all but the last, each loss / k scaled by a GradScaler (disabled unless fp16),
then one optimizer step.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist

from harness import data, precision
from harness.accounting import train_state_bytes, zero_bytes
from harness.hookspecs import hookimpl
from harness.memory import saved_for_backward, tensor_bytes
from harness.model import GPT, PRESETS, ModelArgs
from harness.optimization import ParamError
from harness.reference import load_model, model_facts
from harness.workload import Knobs, Run, RunContext, Workload


@dataclass
class TrainKnobs(Knobs):
    """What a training optimization may set on a `TrainRun` (listed in docs/plugins.md); core reads them."""

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


def no_sync(model: torch.nn.Module):
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


@dataclass
class TrainSpec:
    """Settings of a training case."""

    model: str = field(default="nano", metadata={
        "help": f"model preset ({', '.join(PRESETS)}: random init), reference:NAME (trained, for fine-tuning) or "
                "hf:PATH (a local transformers causal LM: its weights, its tokenizer for corpus data)"})
    batch: int = field(default=8, metadata={"help": "global batch (sequences per step, summed over ranks)"})
    seq_len: int = field(default=128, metadata={"help": "tokens per sequence (<= the preset's block_size)"})
    steps: int = field(default=3, metadata={"help": "K: steps of the correctness pass (distinct fixed batches)"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    optimizer: Literal["adamw"] = field(
        default="adamw", metadata={"help": "optimizer: AdamW, fused or foreach where the device has it"})
    tf32: bool = field(default=False, metadata={"help": "allow TF32 matmuls in the fp32 parts (CUDA only)"})
    data: Literal["synthetic", "corpus"] = field(
        default="synthetic", metadata={"help": "batches: 'synthetic' = seeded uniform random byte tokens; "
                                               "'corpus' = seeded windows of the harness.data training text "
                                               "(encoded by an hf: model's own tokenizer when it has one)"})

    def __post_init__(self):
        facts = model_facts(self.model)
        block = facts.block_size
        if self.batch < 1:
            raise ParamError("batch", f"batch must be >= 1 (got {self.batch})")
        if not 1 <= self.seq_len <= block:
            raise ParamError("seq_len", f"seq_len must be in 1..{block} for model '{self.model}' "
                                        f"(got {self.seq_len})")
        if self.steps < 1:
            raise ParamError("steps", f"steps must be >= 1 (got {self.steps})")
        if not self.lr > 0:
            raise ParamError("lr", f"lr must be > 0 (got {self.lr})")
        if self.data == "corpus" and not facts.tokenizer and facts.vocab_size < data.VOCAB_SIZE:
            raise ParamError("data", f"corpus data are byte ids 0..255, but '{self.model}' has a "
                                     f"{facts.vocab_size}-token vocabulary and no tokenizer files; use data: "
                                     "synthetic, or a model folder with its tokenizer")


def load_train_model(name: str, device: torch.device) -> torch.nn.Module:
    """A fresh model to train, in train mode: a preset, randomly initialised from the current seed, a trained
    reference (`harness.reference`, from its cache; trained there on first use) or an hf: folder's weights
    (`harness.hf.load_hf`, dropout off). One resolver for every workload: `harness.reference.load_model`."""
    if name in PRESETS:
        return GPT(ModelArgs.from_name(name)).to(device)  # from the caller's seed, as before
    return load_model(name, device).train()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A CPU fp32 copy of the whole tensor (gathers a DTensor shard; a collective, so every rank calls it)."""
    t = t.full_tensor() if hasattr(t, "full_tensor") else t
    return t.detach().float().cpu().clone()


class TrainRun(Run):
    """A causal LM, an AdamW optimizer and fixed batches; `step()` trains on the next batch."""

    def __init__(self, spec: TrainSpec, ctx: RunContext):
        super().__init__(ctx)
        self.spec, self.device = spec, torch.device(ctx.device)
        self.knobs = TrainKnobs(tf32=spec.tf32)
        self.no_scaler = torch.amp.GradScaler(self.device.type, enabled=False)
        torch.manual_seed(ctx.seed)
        self.raw_model = load_train_model(spec.model, self.device)
        self.args = self.raw_model.args  # ModelArgs, or HFArgs for an hf: model (the same shape fields)
        self.model: torch.nn.Module = self.raw_model
        self.optimizer = self.make_optimizer(self.raw_model.parameters())
        self.world = 1  # ranks sharing the global batch
        self.saved: dict[int, int] | None = None  # storage -> bytes saved for backward, while counted
        self.grad_bytes = 0
        self.facts: dict[str, Any] = {}  # what an optimization measured in apply() for its check, in outputs()
        self.global_batches = data.train_batches(  # [(x, y)] * steps, each [B, T] on the CPU
            spec.data, spec.steps, spec.batch, spec.seq_len, self.args.vocab_size,
            getattr(self.raw_model, "tokenizer", None), ctx.seed + 1)
        self.batches = [(x.to(self.device), y.to(self.device)) for x, y in self.global_batches]
        self.steps_done = 0
        self.last_loss: torch.Tensor | None = None
        self.units = {"tokens": spec.batch * spec.seq_len, "samples": spec.batch}
        self.info.update({"model": spec.model, "params": self.raw_model.num_params(),
                          "matmul_params": self.raw_model.num_params(matmul_only=True),
                          "optimizer": adamw_name(self.optimizer_kwargs()), "data": spec.data, "autocast": None})
        if getattr(self.raw_model, "dropout_off", None):
            self.info["dropout_off"] = ", ".join(self.raw_model.dropout_off)
        if self.device.type == "cuda":  # the fp32 baseline's precision is part of the case (rule T10)
            self.info["tf32"] = spec.tf32

    def make_optimizer(self, params, optimizer_class: type = torch.optim.AdamW) -> torch.optim.Optimizer:
        """AdamW over `params`, fused where the device supports it, else foreach (feature-detected)."""
        return optimizer_class(params, **self.optimizer_kwargs())

    def optimizer_kwargs(self) -> dict[str, Any]:
        """`adamw_kwargs` for this run's learning rate, device and `knobs.optimizer_impl`."""
        return adamw_kwargs(self.spec.lr, self.device.type, self.knobs.optimizer_impl)

    def shard_batches(self, rank: int, world_size: int) -> None:
        """Keep this rank's slice of each global batch; the global batch (and so the result) is unchanged."""
        if self.spec.batch % world_size:
            raise ParamError("batch", f"global batch {self.spec.batch} does not split over {world_size} ranks; "
                                      f"use a multiple of {world_size}")
        per = self.spec.batch // world_size
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
        """nanoGPT's step on a local batch x, y [B, T]: `knobs.micro_batches` = k micro-batches, each forward
        under autocast, its loss / k scaled and backward (DDP's all-reduce on the last one only), then one
        optimizer step (with `keep_grads`, returns before it, gradients kept). Returns the batch's mean loss,
        detached. `saved` then holds the largest micro-batch's saved-for-backward bytes: each micro-batch's are
        freed by its backward before the next forward, so that is the peak, not the sum."""
        k = self.knobs.micro_batches
        if x.size(0) % k:  # the local batch under DDP: global batch / world_size
            raise ParamError("micro_batches", f"the local batch of {x.size(0)} does not split into {k} "
                                              f"micro-batches; make batch a multiple of world_size x {k}")
        if k > 1:
            self.info["micro_batch"] = x.size(0) // k
        total, peak = torch.zeros((), device=x.device), {}
        for i, (xm, ym) in enumerate(zip(x.chunk(k), y.chunk(k))):  # xm, ym: [B / k, T]
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
                # autograd's saved-for-backward bytes (harness.memory.saved_for_backward) while `saved` points at
                # them: activation_checkpointing adds the block inputs its checkpoint keeps
                counting = saved_for_backward(self.raw_model) if self.knobs.count_activations else None
                try:
                    with counting or contextlib.nullcontext() as self.saved:
                        loss, forward_backward_s = self.synced(
                            functools.partial(self.train_step, x, y, keep_grads=True))
                    if self.saved is not None:
                        self.info["activation_bytes"] = sum(self.saved.values())
                finally:
                    self.saved = None
                scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
                grads = {n: full_tensor(p.grad) / scale for n, p in self.raw_model.named_parameters()
                         if p.grad is not None}
                self.grad_bytes = tensor_bytes(p.grad for p in self.raw_model.parameters())
                _, update_s = self.synced(self.optimizer_step)
                if self.first_call_s is None:
                    self.first_call_s = forward_backward_s + update_s
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
        """Per-rank bytes at rest by the ZeRO formulas (`harness.accounting.zero_bytes`) for this run."""
        trainable = sum(p.numel() for p in self.raw_model.parameters() if p.requires_grad)
        return zero_bytes(self.raw_model.num_params(), trainable, self.world, self.knobs.sharding)

    def extra_metrics(self, median_s: float) -> dict[str, Any]:
        """tokens/s, samples/s, model TFLOP/s (6N + 12LHQT, recompute not counted), MFU, final loss."""
        tokens_s = self.units["tokens"] / median_s
        flops = self.raw_model.flops_per_token(self.spec.seq_len) * tokens_s
        out: dict[str, Any] = {"tokens_per_s": tokens_s, "samples_per_s": self.units["samples"] / median_s,
                               "model_tflops": flops / 1e12, "mfu": None,
                               "loss": self.global_loss(self.last_loss) if self.last_loss is not None else None,
                               "memory_estimate": self.memory_estimate()}
        peak = self.ctx.env.get("peak") or {}
        key = precision.peak_key(self.device.type, self.knobs.autocast_dtype, self.knobs.tf32)
        if peak.get(key):
            out["mfu"] = flops / self.world / peak[key] if self.distributed else flops / peak[key]
            out["mfu_peak"] = key
        if self.distributed:
            out["tokens_per_s_per_process"] = tokens_s / self.world
            out["world_size"] = self.world
        if self.scaler.is_enabled():
            out["skipped_steps"] = self.skipped_steps()
        return out


class TrainWorkload(Workload):
    """Train the GPT: forward, cross-entropy loss, backward, AdamW step, on seeded synthetic batches."""

    name = "train"
    kind = "training"
    description = "One training step (forward + backward + AdamW) of the GPT on a fixed global batch."
    Spec = TrainSpec
    run_class = TrainRun

    def finish(self, run: TrainRun) -> None:
        run.info["memory_estimate"] = run.memory_estimate()


@hookimpl
def register_workloads(register):
    register(TrainWorkload)
