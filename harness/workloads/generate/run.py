"""`GenerateRun`: prompts in, exactly `new_tokens` tokens out, with this run's knobs (`GenerateAPI`)."""


from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from harness.core.checks import batch_near_ties
from harness.core.device import sync
from harness.core.stats import itl_percentiles
from harness.core.workload import Run, RunContext
from harness.models import reference
from harness.models.accounting import (
    bandwidth_figures,
    buffer_bytes,
    decode_figures,
    embedding_bytes,
    kv_step_bytes,
    weight_bytes,
)
from harness.models.gpt import kv_cache_bytes
from harness.models.precision import resolve_dtype
from harness.workloads.generate.decode import (
    generate_cached,
    generate_no_cache,
    make_sampler,
    static_cache,
)
from harness.workloads.generate.knobs import GenerateKnobs
from harness.workloads.generate.spec import GenerateSpec

EVAL_SEQS, EVAL_LEN = 4, 128  # held-out tokens for the quality outputs (perplexity, top-1)


def load_model(name: str, device: torch.device, dtype: torch.dtype, seed: int) -> nn.Module:
    """A model by spec name (preset: seeded random init; reference:NAME; hf:PATH; a plugin's prefix), in eval
    mode: `harness.models.reference.load_model`, the one resolver, in the run's device and dtype."""
    return reference.load_model(name, device, dtype, seed).to(device=device, dtype=dtype).eval()


def held_out(n: int, length: int, seed: int, synthetic: bool, vocab: int, tokenizer=None) -> torch.Tensor:
    """[n, length] prompt tokens: windows of held-out text (harness.models.data; encoded by `tokenizer`, a user model's
    own, when given, else bytes) or seeded random ids."""
    if synthetic:
        return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))
    from harness.models import data

    if tokenizer is None:
        return data.prompts(n, length, seed)
    x, _ = data.get_batch(data.tokenized_split(tokenizer), n, length, torch.Generator().manual_seed(seed))
    return x


class GenerateRun(Run):
    """One generation case: prompts in, exactly `new_tokens` out, with this run's `knobs` (`GenerateKnobs`)."""

    ctx: RunContext
    info: dict[str, Any]
    knobs: GenerateKnobs
    spec: GenerateSpec
    device: torch.device
    dtype: torch.dtype
    model: nn.Module
    prompts: torch.Tensor
    pad: torch.Tensor | None
    token_times: list[list[float]] | None
    timed: bool

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
        self.keep_cache(self.last_cache, batch, max_len if self.knobs.cache_kind == "static" else max_len - 1)
        return self.last_cache

    def keep_cache(self, cache: Any, batch: int, length: int) -> None:
        """Record the last generate's KV cache and the (batch, positions) it holds, for `kv_bytes` (a generate
        that brings its own cache, transformers' generate() say, calls this)."""
        self.last_cache, self._cache_shape = cache, (batch, length)

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
            from harness.models.hf import library_generate

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
        return {"tokens": tokens, "prompts": self.prompts.cpu(), "sampling": self.spec.sampling,
                "pad": None if self.pad is None else self.pad.cpu(),
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


