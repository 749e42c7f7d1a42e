"""`ServeSpec`: the settings of a `serve` case: the model, the trace, the server's slots and the goodput SLO."""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness import ParamError
from harness.models.reference import model_source
from harness.workloads.serve.trace import read_lengths


@dataclass
class ServeSpec:
    """Settings of a `serve` case: the model, the trace, the server's slots and the goodput SLO."""

    model: str = field(default="nano", metadata={"help": "preset name or reference:NAME (the harness GPT)"})
    dtype: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "weights and activations"})
    prompts: Literal["text", "synthetic"] = field(
        default="text", metadata={"help": "held-out text of harness.models.data, or seeded random tokens"})
    requests: int = field(default=16, metadata={"help": "requests in the trace"})
    rate: float = field(default=40.0, metadata={"help": "mean arrival rate, requests per second"})
    arrivals: Literal["poisson", "gamma", "offline"] = field(default="poisson", metadata={
        "help": "poisson; gamma (burstiness: < 1 burstier, > 1 more regular); offline: every request at t = 0"})
    burstiness: float = field(default=1.0, metadata={"help": "gamma shape of the inter-arrival gaps (1 = Poisson)"})
    slots: int = field(default=4, metadata={"help": "sequences decoded together (the batch size)"})
    prompt_min: int = field(default=8, metadata={"help": "shortest prompt, tokens"})
    prompt_max: int = field(default=48, metadata={"help": "longest prompt, tokens"})
    output_min: int = field(default=4, metadata={"help": "shortest output, tokens"})
    output_max: int = field(default=64, metadata={"help": "longest output, tokens"})
    lengths_file: str | None = field(default=None, metadata={
        "help": "JSONL / CSV of prompt_len, output_len per request (taken in order, cycled; a relative path is "
                "from the current directory); null: uniform"})
    max_concurrency: int | None = field(default=None, metadata={
        "help": "client-side cap on requests in flight (send the next only when fewer are); null: no cap"})
    max_batched_tokens: int | None = field(default=None, metadata={
        "help": "prompt tokens prefilled per iteration at most (vLLM's max_num_batched_tokens); null: no bound"})
    slo_ttft_s: float = field(default=0.25, metadata={"help": "goodput SLO: time to first token, seconds"})
    slo_tpot_s: float = field(default=0.02, metadata={"help": "goodput SLO: time per output token, seconds"})

    def __post_init__(self) -> None:
        for name in ("requests", "slots", "prompt_min", "output_min"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1 (got {getattr(self, name)})")
        for name, low in (("prompt_max", "prompt_min"), ("output_max", "output_min")):
            if getattr(self, name) < getattr(self, low):
                raise ParamError(name, f"must be >= {low} ({getattr(self, low)})")
        for name in ("rate", "burstiness", "slo_ttft_s", "slo_tpot_s"):
            if getattr(self, name) <= 0:
                raise ParamError(name, f"must be > 0 (got {getattr(self, name)})")
        for name in ("max_concurrency", "max_batched_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1 or null (got {getattr(self, name)})")
        widened = self.lengths_file is not None and self.widen_to_lengths_file()
        if model_source(self.model)[0] == "hf":
            raise ParamError("model", "the serve workload needs a harness model (a preset or reference:NAME): its "
                                      "attention takes the slot cache")
        from harness.models.reference import model_facts

        facts = model_facts(self.model)  # ParamError("model") for an unknown name
        if facts.block_size and self.prompt_max + self.output_max > facts.block_size:
            raise ParamError("lengths_file" if widened else "output_max",
                             f"prompt_max + output_max = {self.prompt_max + self.output_max}"
                             f"{' (with the lengths file)' if widened else ''} exceeds the '{self.model}' context "
                             f"of {facts.block_size} positions")
        if self.prompts == "text" and facts.vocab_size < 256:
            raise ParamError("prompts", f"text prompts are byte ids 0..255, but '{self.model}' has a "
                                        f"{facts.vocab_size}-token vocabulary; use prompts: synthetic")

    def widen_to_lengths_file(self) -> bool:
        """prompt_max / output_max cover the file's longest rows (the slot cache is sized by them); True if
        either grew."""
        from harness.core.errors import InputError

        try:
            lengths = read_lengths(self.lengths_file)
        except InputError as exc:
            raise ParamError("lengths_file", str(exc)) from None
        before = self.prompt_max, self.output_max
        self.prompt_max = max(self.prompt_max, max(p for p, _ in lengths))
        self.output_max = max(self.output_max, max(o for _, o in lengths))
        return (self.prompt_max, self.output_max) != before


