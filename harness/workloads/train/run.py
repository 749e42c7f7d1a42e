"""`TrainRun`: the `train` workload's run, a causal LM on fixed token batches, on the shared `TrainLoop`.

The model is a built-in preset, a trained reference, or a user's local Hugging Face model (`hf:PATH`, behind
`harness.models.hf.HFCausalLM`: the same `forward(idx, targets)`, decoder layers as `blocks`, dropout off).
"""

from __future__ import annotations

from typing import Any

import torch

from harness.core.workload import RunContext
from harness.models import data
from harness.models.gpt import GPT, PRESETS, ModelArgs
from harness.models.reference import load_model
from harness.workloads.train.loop import TrainLoop
from harness.workloads.train.spec import TrainSpec


def load_train_model(name: str, device: torch.device) -> torch.nn.Module:
    """A fresh model to train, in train mode: a preset, randomly initialised from the current seed, a trained
    reference (`harness.models.reference`, from its cache; trained there on first use) or an hf: folder's weights
    (`harness.models.hf.load_hf`, dropout off). One resolver for every workload:
    `harness.models.reference.load_model`."""
    if name in PRESETS:
        return GPT(ModelArgs.from_name(name)).to(device)  # from the caller's seed, as before
    return load_model(name, device).train()


class TrainRun(TrainLoop):
    """A causal LM, an AdamW optimizer and fixed token batches; `step()` trains on the next batch (`LMTrainAPI`)."""

    args: Any

    def __init__(self, spec: TrainSpec, ctx: RunContext):
        self.spec = spec
        torch.manual_seed(ctx.seed)
        model = load_train_model(spec.model, torch.device(ctx.device))
        self.args = model.args  # ModelArgs, or HFArgs for an hf: model (the same shape fields)
        batches = data.train_batches(  # [(x, y)] * steps, each [B, T] on the CPU
            spec.data, spec.steps, spec.batch, spec.seq_len, self.args.vocab_size,
            getattr(model, "tokenizer", None), ctx.seed + 1)
        super().__init__(ctx, model, batches, spec.lr, spec.tf32)
        self.units = {"tokens": spec.batch * spec.seq_len, "samples": spec.batch}
        self.info.update({"model": spec.model, "matmul_params": model.num_params(matmul_only=True),
                          "data": spec.data})
        if getattr(model, "dropout_off", None):
            self.info["dropout_off"] = ", ".join(model.dropout_off)

    def flops_per_step(self) -> float:
        """6N + 12LHQT per token (PaLM appendix B; recompute not counted) times the step's tokens."""
        return self.raw_model.flops_per_token(self.spec.seq_len) * self.units["tokens"]
