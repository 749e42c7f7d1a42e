"""`TrainSpec`: the settings of a `train` case (a causal LM: preset, reference or hf: model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.core.optimization import ParamError
from harness.models import data
from harness.models.gpt import PRESETS
from harness.models.reference import model_facts


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
                                               "'corpus' = seeded windows of the harness.models.data training text "
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
