"""Distillation (Hinton et al. 2015; DistilBERT, Sanh et al. 2019): train a smaller student on the teacher's
logits (KL divergence at temperature T) for a fixed budget, then generate with the student. Training happens in
`apply()`, outside the timed region; its time and final loss are reported in `run.info`. The case's later
processes load the student its first process trained (`RunContext.cache_path`): the same student, ~10 s less
each."""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from harness.api import Check, GenerateAPI, Optimization, ParamError, hookimpl
from harness.core.results import write_bytes
from harness.models.accounting import weight_bytes
from harness.models.gpt import GPT, PRESETS, ModelArgs


@dataclass
class DistillationParams:
    student: str = field(default="micro", metadata={"help": "student shape: a model preset (random init)"})
    steps: int = field(default=200, metadata={"help": "training steps on the teacher's logits"})
    batch: int = field(default=8, metadata={"help": "sequences per training step"})
    seq_len: int = field(default=128, metadata={"help": "tokens per training sequence"})
    lr: float = field(default=3e-3, metadata={"help": "AdamW learning rate"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the KL loss"})
    max_ppl_ratio: float = field(default=1.5, metadata={
        "help": "check bound: student perplexity <= teacher perplexity x this"})

    def __post_init__(self) -> None:
        if self.student not in PRESETS:
            raise ParamError("student", f"unknown preset '{self.student}'; known: {', '.join(PRESETS)}")
        for name in ("steps", "batch", "seq_len"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1 (got {getattr(self, name)})")
        if self.lr <= 0 or self.temperature <= 0 or self.max_ppl_ratio < 1:
            raise ParamError("lr", "lr and temperature must be > 0 and max_ppl_ratio >= 1")


def training_tokens(synthetic: bool, vocab: int, seed: int) -> torch.Tensor:
    """1-D token stream to distill on: the training split of harness.models.data, or seeded random tokens."""
    if not synthetic:
        try:
            from harness.models.data import splits
        except ImportError:
            pass
        else:
            return splits()[0]
    return torch.randint(0, vocab, (1 << 16,), generator=torch.Generator().manual_seed(seed))


def distill(teacher: torch.nn.Module, student: GPT, tokens: torch.Tensor, p: DistillationParams, seed: int,
            device: torch.device) -> list[float]:
    """Minimize T^2 KL(teacher || student) on random windows of `tokens`; returns the loss per step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=p.lr, weight_decay=0.0)
    losses, T = [], p.temperature
    student.train()
    for _ in range(p.steps):
        ix = torch.randint(tokens.numel() - p.seq_len, (p.batch,), generator=g)
        x = tokens[ix[:, None] + torch.arange(p.seq_len)].to(device)  # [B, T]
        with torch.no_grad():
            t_logp = F.log_softmax(teacher(x).float() / T, dim=-1)
        s_logp = F.log_softmax(student(x) / T, dim=-1)
        loss = F.kl_div(s_logp.flatten(0, 1), t_logp.flatten(0, 1), log_target=True, reduction="batchmean") * T * T
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


class Distillation(Optimization):
    """Replace the model by a student distilled from it; quality against the teacher is the check."""

    name = "distillation"
    requires = GenerateAPI
    description = "smaller student trained on the teacher's logits; speed, size and quality vs the teacher"
    Params = DistillationParams

    def validate(self, spec: Any, plugins: list) -> None:
        context = PRESETS[self.params.student].block_size
        if spec.prompt_len + spec.new_tokens > context or self.params.seq_len > context:
            raise ParamError("student", f"the '{self.params.student}' context ({context}) is shorter than the "
                                        f"workload's prompt_len + new_tokens ({spec.prompt_len + spec.new_tokens}) "
                                        f"or seq_len ({self.params.seq_len})")

    def apply(self, run: GenerateAPI) -> None:
        teacher, p = run.model, self.params
        args = ModelArgs.from_name(p.student, vocab_size=teacher.args.vocab_size)  # validate() checked its context
        torch.manual_seed(run.ctx.seed)
        student = GPT(args).to(run.device)
        key = [dataclasses.asdict(p), dataclasses.asdict(run.spec), sum(float(w.double().sum()) for w in
                                                                         teacher.state_dict().values())]
        cached = run.ctx.cache_path("student", key)
        if cached is not None and cached.exists():  # trained by an earlier process of this case
            saved = torch.load(cached, map_location=run.device)
            student.load_state_dict(saved["state"])
            facts = {**saved["facts"], "distill_cached": True}
        else:
            tokens = training_tokens(run.spec.prompts == "synthetic", args.vocab_size, run.ctx.seed)
            t0 = time.perf_counter()
            with torch.enable_grad():
                losses = distill(teacher, student, tokens, p, run.ctx.seed, run.device)
            facts = {"distill_train_s": time.perf_counter() - t0, "distill_first_loss": losses[0],
                     "distill_final_loss": losses[-1]}
            if cached is not None:
                buffer = io.BytesIO()
                torch.save({"state": student.state_dict(), "facts": facts}, buffer)
                write_bytes(cached, buffer.getvalue())
        run.model = student.to(run.dtype).eval()
        run.info.update(student=p.student, distill_steps=p.steps, **facts,
                        teacher_weight_bytes=weight_bytes(teacher), student_weight_bytes=weight_bytes(run.model))

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        t_ppl, s_ppl = baseline["perplexity"], optimized["perplexity"]
        top1 = float((baseline["top1"] == optimized["top1"]).float().mean())
        return [Check("student_perplexity_within_bound", s_ppl <= t_ppl * self.params.max_ppl_ratio,
                      {"teacher": t_ppl, "student": s_ppl, "ratio": s_ppl / t_ppl, "top1_agreement": top1,
                       "size_ratio": optimized["weight_bytes"] / baseline["weight_bytes"]},
                      f"student perplexity <= teacher x {self.params.max_ppl_ratio}")]


@hookimpl
def register_optimizations(register) -> None:
    register(Distillation)
