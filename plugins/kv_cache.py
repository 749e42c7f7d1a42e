"""KV cache: keep each layer's keys and values so a decode step is one forward of one token, not of the prefix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness.api import Check, GenerateAPI, Optimization, hookimpl
from harness.core.checks import tokens_check
from harness.workloads.generate.decode import decode_one_token


@dataclass
class KVCacheParams:
    kind: Literal["dynamic", "static", "static_cuda_graphs"] = field(default="dynamic", metadata={
        "help": "dynamic: grows by concatenation; static: pre-allocated [B, H, max_len, D] written in place; "
                "static_cuda_graphs: static + the decode step compiled with mode='reduce-overhead' (CUDA)"})


class KVCache(Optimization):
    """Decode with a KV cache instead of recomputing the whole prefix for every token."""

    name = "kv_cache"
    requires = GenerateAPI
    description = "KV cache (dynamic, static, static + CUDA graphs); tokens must equal the no-cache decode"
    Params = KVCacheParams

    def supports(self, env: dict[str, Any]) -> str | None:
        if self.params.kind == "static_cuda_graphs" and not str(env.get("device", "cpu")).startswith("cuda"):
            return "CUDA graphs need a CUDA device; on CPU use kind: static"
        return None

    def apply(self, run: GenerateAPI) -> None:
        run.knobs.cache_kind = "dynamic" if self.params.kind == "dynamic" else "static"
        if self.params.kind == "static_cuda_graphs":  # supports() refused it without CUDA
            # gpt-fast: compile the one-token step; reduce-overhead records it into a CUDA graph on first calls,
            # which the static cache's fixed shapes (reused across generates) make possible.
            run.knobs.decode = torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)
            run.knobs.compiled_decode = True  # decoder: library lets transformers compile its own decode step
        run.info["kv_cache"] = self.params.kind

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        checks = [tokens_check("tokens_identical_to_no_cache", baseline, optimized)]
        kv = optimized.get("kv_cache")
        if kv is not None:
            checks.append(Check("kv_bytes_match_formula", kv["measured"] == kv["formula"],
                                {"measured": kv["measured"], "formula": kv["formula"], "seq": kv["seq"],
                                 "batch": kv["batch"]}, "exact: 2 x layers x batch x seq x heads x head_dim x bytes"))
        else:
            checks.append(Check("kv_bytes_match_formula", False, {"measured": None}, "a cache must exist"))
        return checks


@hookimpl
def register_optimizations(register) -> None:
    register(KVCache)
