"""`GenerateSpec`: the settings of a `generate` case."""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.core.optimization import ParamError
from harness.models.reference import model_source


@dataclass
class GenerateSpec:
    """Settings of a `generate` case."""

    model: str = field(default="nano", metadata={"help": "preset name, reference:NAME or hf:PATH"})
    batch: int = field(default=1, metadata={"help": "sequences generated per step"})
    prompt_len: int = field(default=64, metadata={"help": "prompt tokens per sequence"})
    new_tokens: int = field(default=128, metadata={"help": "tokens generated per sequence (no early stop)"})
    dtype: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "weights and activations"})
    sampling: Literal["greedy", "sample"] = field(default="greedy", metadata={"help": "argmax or sampling"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature when sampling"})
    top_k: int | None = field(default=None, metadata={"help": "sample among the k most likely tokens"})
    prompts: Literal["text", "synthetic"] = field(
        default="text", metadata={"help": "held-out text of harness.models.data, or seeded random tokens"})
    decoder: Literal["harness", "library"] = field(
        default="harness", metadata={"help": "harness: the harness's decode loop over the model's forward; "
                                              "library: transformers' generate() on an hf: model (greedy)"})

    def __post_init__(self) -> None:
        for name in ("batch", "prompt_len", "new_tokens"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1 (got {getattr(self, name)})")
        if self.temperature <= 0:
            raise ParamError("temperature", f"must be > 0 (got {self.temperature}); use sampling: greedy")
        if self.top_k is not None and self.top_k < 1:
            raise ParamError("top_k", f"must be >= 1 or null (got {self.top_k})")
        if self.decoder == "library" and (model_source(self.model)[0] != "hf" or self.sampling != "greedy"):
            raise ParamError("decoder", "decoder: library is transformers' generate(): it needs an hf: model and "
                                        "sampling: greedy")
        from harness.models.reference import model_facts

        facts = model_facts(self.model)  # ParamError("model") for an unknown name or a folder without config.json
        if facts.block_size and self.prompt_len + self.new_tokens > facts.block_size:
            raise ParamError("new_tokens", f"prompt_len + new_tokens = {self.prompt_len + self.new_tokens} "
                                           f"exceeds the '{self.model}' context of {facts.block_size} positions")
        if self.prompts == "text" and not facts.tokenizer and facts.vocab_size < 256:
            raise ParamError("prompts", f"text prompts are byte ids 0..255, but '{self.model}' has a "
                                        f"{facts.vocab_size}-token vocabulary and no tokenizer files; use prompts: "
                                        "synthetic, or a model folder with its tokenizer")


