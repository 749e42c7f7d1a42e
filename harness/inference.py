"""The `generate` workload: prompts in, exactly `new_tokens` tokens out, with the parts plugins replace.

Metric definitions (stated once; the report shows them):
  e2e: one `step()`, a whole generate (prefill + decode) of the batch, synchronized wall clock (`wall_sync`).
  TTFT (time to first token): a generate of one token with the same model, cache and generate function, i.e.
    the prefill plus the first sampling; measured separately in `extra_metrics` (synchronized perf_counter,
    median of 3 calls after the timed samples), not carved out of the e2e samples.
  TPOT (time per output token) = (e2e - TTFT) / (new_tokens - 1), the mean gap between a sequence's tokens.
  ITL (inter-token latency) percentiles: the gaps between consecutive tokens of a sequence as a streaming client
    sees them (synchronized after every token), from one extra generate after the timed samples; their tail
    shows stalls that TPOT averages away. p99 only with >= 100 gaps.
  tokens/s total = batch x new_tokens / e2e; tokens/s per sequence = new_tokens / (the time one sequence took:
    e2e when the batch runs together, e2e / batch when sequences run one after another).
  weight bytes (harness.accounting): parameters and persistent buffers outside `nn.Embedding` modules, each
    tensor once (gpt-fast); quantized weights count their packed int8 bytes plus scales.
  KV bytes moved per decode step (`harness.accounting.kv_step_bytes`), per sequence decoded together: a static
    cache is read whole (attention over all max_len positions, later ones masked); a dynamic cache is read and
    rewritten by `torch.cat` (L positions read, L + 1 written) and then read by attention (L + 1), at the mean L.
  MBU (CUDA, peak bandwidth known) = (weight bytes + KV bytes moved per decode step) / TPOT / peak bandwidth;
    regime: launch-bound below 10 %, bandwidth-bound at 50 % or more, mixed in between (rule U3, docs/measurement.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from harness import reference
from harness.accounting import (
    bandwidth_figures,
    buffer_bytes,
    decode_figures,
    embedding_bytes,
    kv_step_bytes,
    weight_bytes,
)
from harness.checks import batch_near_ties
from harness.generate import (
    decode_one_token,
    generate_cached,
    generate_no_cache,
    make_sampler,
    static_cache,
)
from harness.hookspecs import hookimpl
from harness.model import kv_cache_bytes
from harness.optimization import ParamError
from harness.precision import resolve_dtype
from harness.stats import itl_percentiles
from harness.workload import Knobs, Run, RunContext, Workload, sync

EVAL_SEQS, EVAL_LEN = 4, 128  # held-out tokens for the quality outputs (perplexity, top-1)


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
        default="text", metadata={"help": "held-out text of harness.data, or seeded random tokens"})
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
        if self.decoder == "library" and (not self.model.startswith("hf:") or self.sampling != "greedy"):
            raise ParamError("decoder", "decoder: library is transformers' generate(): it needs an hf: model and "
                                        "sampling: greedy")
        from harness.reference import model_facts

        facts = model_facts(self.model)  # ParamError("model") for an unknown name or a folder without config.json
        if facts.block_size and self.prompt_len + self.new_tokens > facts.block_size:
            raise ParamError("new_tokens", f"prompt_len + new_tokens = {self.prompt_len + self.new_tokens} "
                                           f"exceeds the '{self.model}' context of {facts.block_size} positions")
        if self.prompts == "text" and not facts.tokenizer and facts.vocab_size < 256:
            raise ParamError("prompts", f"text prompts are byte ids 0..255, but '{self.model}' has a "
                                        f"{facts.vocab_size}-token vocabulary and no tokenizer files; use prompts: "
                                        "synthetic, or a model folder with its tokenizer")


def load_model(name: str, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """A model by spec name (preset: seeded random init; reference:NAME; hf:PATH; a plugin's prefix), in eval
    mode: `harness.reference.load_model`, the one resolver, in the run's device and dtype."""
    return reference.load_model(name, device, dtype, seed).to(device=device, dtype=dtype).eval()


def held_out(n: int, length: int, seed: int, synthetic: bool, vocab: int, tokenizer=None) -> torch.Tensor:
    """[n, length] prompt tokens: windows of held-out text (harness.data; encoded by `tokenizer`, a user model's
    own, when given, else bytes) or seeded random ids."""
    if synthetic:
        return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
    from harness import data

    if tokenizer is None:
        return data.prompts(n, length, seed)
    x, _ = data.get_batch(data.tokenized_split(tokenizer), n, length, torch.Generator().manual_seed(seed))
    return x


@dataclass
class GenerateKnobs(Knobs):
    """What an inference optimization may set on a `GenerateRun` (listed in docs/plugins.md); core reads them.
    Plugins also wrap or replace `model`, and may replace `prompts` [B, P] with `pad` [B] (left padding)."""

    cache_kind: Literal["none", "dynamic", "static"] = field(default="none", metadata={
        "help": "KV cache: none (recompute the prefix) / dynamic (grown by concatenation) / static (kv_cache)"})
    decode: Callable[..., torch.Tensor] = field(default=decode_one_token, metadata={
        "help": "the one-token decode step (model, tok [B, 1], input_pos [1], cache, pad) -> logits [B, V]; "
                "kv_cache compiles it for CUDA graphs"})
    compiled_decode: bool = field(default=False, metadata={
        "help": "decoder: library: let transformers compile its static-cache decode step (kv_cache)"})
    generate_fn: Callable[..., torch.Tensor] | None = field(default=None, metadata={
        "help": "replaces the whole generate: fn(run, prompts [B, P], n) -> [B, n] (speculative_decoding)"})
    assistant: Any = field(default=None, metadata={
        "help": "decoder: library: a draft model for transformers' assisted generation (speculative_decoding)"})
    layout: Literal["batched", "sequential"] = field(default="batched", metadata={
        "help": "batched: one forward for the batch; sequential: one sequence at a time (per-sequence figures "
                "follow it; batching, speculative_decoding)"})
    metric_fns: list[Callable[[float], dict[str, Any]]] = field(default_factory=list, metadata={
        "help": "extra fn(median_s) -> dict merged into the case's metrics (quantization, speculative_decoding)"})


class GenerateRun(Run):
    """One generation case: prompts in, exactly `new_tokens` out, with this run's `knobs` (`GenerateKnobs`)."""

    def __init__(self, spec: GenerateSpec, ctx: RunContext):
        super().__init__(ctx)
        self.spec, self.device = spec, ctx.device
        self.dtype = resolve_dtype(spec.dtype)
        self.model = load_model(spec.model, ctx.device, self.dtype, ctx.seed)
        self.prompts = self.held_out(spec.batch, spec.prompt_len, ctx.seed)
        self.pad: torch.Tensor | None = None
        eval_len = min(EVAL_LEN, (self.model.args.block_size or EVAL_LEN + 1) - 1)  # a short-context user model
        self.eval_tokens = self.held_out(EVAL_SEQS, eval_len + 1, ctx.seed + 1)
        self.new_tokens = spec.new_tokens
        self.knobs = GenerateKnobs()
        self.last_cache = None
        self._static_caches: dict[tuple[int, int], Any] = {}
        self.token_times: list[list[float]] | None = None  # per sequence (or batch), when each token was ready
        self.info.update(model=spec.model, dtype=spec.dtype, sampling=spec.sampling, decoder=spec.decoder)

    def held_out(self, n: int, length: int, seed: int) -> torch.Tensor:
        """[n, length] tokens on the run's device, as the workload's `prompts` setting says (text is encoded by
        the model's own tokenizer when it has one: an hf: model with tokenizer files)."""
        synthetic = self.spec.prompts == "synthetic"
        tokenizer = getattr(self.model, "tokenizer", None)
        return held_out(n, length, seed, synthetic, self.model.args.vocab_size, tokenizer).to(self.device)

    @property
    def batch(self) -> int:
        return self.prompts.size(0)

    def new_cache(self, batch: int, max_len: int):
        """A cache of `cache_kind`; static caches are allocated once per shape and reused (positions are
        overwritten before they are read, and later ones are masked), as a server pre-allocates them."""
        if self.knobs.cache_kind == "none":
            self.last_cache = None
            return None
        if self.knobs.cache_kind == "static":
            key = (batch, max_len)
            if key not in self._static_caches:
                self._static_caches[key] = static_cache(self.model, batch, max_len, self.dtype, self.device)
            self.last_cache = self._static_caches[key]
        else:
            self.last_cache = self.model.new_cache("dynamic", batch, max_len)
        # a full generate leaves max_len positions in a static cache, max_len - 1 in a dynamic one
        self._cache_shape = (batch, max_len if self.knobs.cache_kind == "static" else max_len - 1)
        return self.last_cache

    @torch.inference_mode()
    def generate(self, prompts: torch.Tensor, n: int, pad: torch.Tensor | None = None) -> torch.Tensor:
        """prompts [B, P] (left-padded by `pad` [B]) -> new tokens [B, n], with this run's layout, generate
        function, cache and sampler. One at a time, each prompt runs without its padding."""
        if self.knobs.layout == "sequential" and prompts.size(0) > 1:
            starts = pad.tolist() if pad is not None else [0] * prompts.size(0)
            return torch.cat([self.generate(p[None, s:], n) for p, s in zip(prompts, starts)], dim=0)
        if self.knobs.generate_fn is not None:
            if pad is not None:
                raise ValueError("this plugin's generate function takes equal-length prompts (no prompt_min)")
            return self.knobs.generate_fn(self, prompts, n)
        if self.spec.decoder == "library":
            from harness.hf import library_generate

            return library_generate(self, prompts, n, pad)
        sampler = make_sampler(self.spec, self.ctx.seed, self.device)
        if self.token_times is not None:
            sampler = self.clocked(sampler)
        if self.knobs.cache_kind == "none":
            return generate_no_cache(self.model, prompts, n, sampler, pad)
        cache = self.new_cache(prompts.size(0), prompts.size(1) + n)
        return generate_cached(self.model, prompts, n, sampler, cache, self.knobs.decode, pad)

    def step(self) -> None:
        self.generate(self.prompts, self.new_tokens, self.pad)

    @torch.inference_mode()
    def quality(self) -> dict[str, Any]:
        """Perplexity and top-1 predictions of this run's model on held-out tokens (teacher forcing)."""
        x, y = self.eval_tokens[:, :-1], self.eval_tokens[:, 1:]
        logits = self.model(x).float()  # [N, T, V]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        return {"perplexity": float(torch.exp(nll)), "top1": logits.argmax(-1).cpu()}

    def outputs(self) -> dict[str, Any]:
        tokens, seconds = self.synced(lambda: self.generate(self.prompts, self.new_tokens, self.pad))
        if self.first_call_s is None:  # the run's first work: compile, capture, lazy init
            self.first_call_s = seconds
        tokens = tokens.cpu()
        return {"tokens": tokens, "prompts": self.prompts.cpu(), "pad": None if self.pad is None else self.pad.cpu(),
                "ties": batch_near_ties(self.model, self.prompts, self.pad, tokens, self.dtype)
                if self.spec.sampling == "greedy" else None,
                **self.quality(), "kv_cache": self.kv_bytes(), "weight_bytes": weight_bytes(self.model)}

    def kv_bytes(self) -> dict[str, int] | None:
        """Measured bytes of the last generate's KV cache and the EFFECTS.md formula for the same length."""
        cache = self.last_cache
        if cache is None:
            return None
        batch, length = self._cache_shape
        element = self.dtype.itemsize
        return {"measured": cache.nbytes(), "formula": kv_cache_bytes(self.model.args, batch, length, element),
                "seq": length, "batch": batch}

    def memory(self) -> dict[str, int]:
        """Weights (each tensor once, embeddings included), non-persistent buffers when any, the KV cache."""
        seen: set = set()
        out = {"weights": weight_bytes(self.model, seen) + embedding_bytes(self.model, seen)}
        buffers = buffer_bytes(self.model, seen)
        if buffers:
            out["buffers"] = buffers
        kv = self.kv_bytes()
        if kv:
            out["kv_cache"] = kv["measured"]
        return out

    def extra_metrics(self, median_s: float) -> dict[str, Any]:
        """TTFT, TPOT, e2e and tokens/s (`accounting.decode_figures`), the KV cache's bytes, the bytes a decode
        step moves and MBU (`accounting.bandwidth_figures`), ITL percentiles, and the plugins' `metric_fns`."""
        sequential = self.knobs.layout == "sequential"
        out = decode_figures(median_s, self.time_first_token(), self.new_tokens, self.batch, sequential)
        out["weight_bytes"] = weight_bytes(self.model)
        kv = self.kv_bytes()
        if kv:
            out.update(kv_bytes_measured=kv["measured"], kv_bytes_formula=kv["formula"])
        if out["tpot_s"] and out["tpot_s"] > 0:
            rows = 1 if sequential else self.batch  # sequences in one decode step
            kv_moved = kv_step_bytes(self.model.args, rows, self.knobs.cache_kind, self.prompts.size(1),
                                     self.new_tokens, self.dtype.itemsize) if kv else 0
            peak = (self.ctx.env or {}).get("peak") or {}
            bandwidth = peak.get("bandwidth_bytes_s") if self.device.type == "cuda" else None
            out.update(bandwidth_figures(out["weight_bytes"], kv_moved, out["tpot_s"], bandwidth))
        out.update(self.inter_token_latencies())
        for fn in self.knobs.metric_fns:
            out.update(fn(median_s))
        return out

    def clocked(self, sampler: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """`sampler` that also records the synchronized time each token (of the whole batch) is ready."""
        times: list[float] = []
        self.token_times.append(times)

        def sample(logits: torch.Tensor) -> torch.Tensor:
            tok = sampler(logits)
            sync(self.device)  # a streaming client reads each token as it comes, so this sync is part of ITL
            times.append(time.perf_counter())
            return tok

        return sample

    def inter_token_latencies(self) -> dict[str, Any]:
        """ITL percentiles from one extra, instrumented generate (outside the timed samples): the gaps between
        consecutive tokens of a sequence. A plugin's own generate function records into `token_times` itself
        (speculative decoding does); empty if it does not."""
        if self.new_tokens < 2:
            return {}
        cache, shape = self.last_cache, getattr(self, "_cache_shape", None)
        self.token_times = []
        try:
            self.generate(self.prompts, self.new_tokens, self.pad)
            return itl_percentiles(self.token_times)
        finally:
            self.token_times = None
            self.last_cache, self._cache_shape = cache, shape

    def time_first_token(self, repeats: int = 3) -> float:
        """Median synchronized time of generating one token (prefill + first sample); keeps `last_cache`."""
        cache, shape = self.last_cache, getattr(self, "_cache_shape", None)
        if self.knobs.layout == "sequential":  # the first prompt alone, without its padding
            seconds = self.median_time(lambda: self.generate(
                self.prompts[:1, int(self.pad[0]) if self.pad is not None else 0:], 1), repeats)
        else:
            seconds = self.median_time(lambda: self.generate(self.prompts, 1, self.pad), repeats)
        self.last_cache, self._cache_shape = cache, shape
        return seconds


class GenerateWorkload(Workload):
    """Generate `new_tokens` tokens for `batch` held-out prompts; baseline: greedy decode without a KV cache."""

    name = "generate"
    kind = "inference"
    description = "prefill + decode of exactly new_tokens tokens per sequence; step = one full generate"
    Spec = GenerateSpec
    run_class = GenerateRun

    def finish(self, run: GenerateRun) -> None:
        run.units = run.units or {"tokens": run.batch * run.new_tokens, "sequences": run.batch}  # final prompts
        run.info.update(cache=run.knobs.cache_kind, layout=run.knobs.layout, batch=run.batch)


@hookimpl
def register_workloads(register) -> None:
    register(GenerateWorkload)
