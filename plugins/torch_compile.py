"""torch.compile: the model's forward and backward compiled by Inductor into fused kernels."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from harness_plugins.mixed_precision import LOSS_ATOL as MIXED_ATOL

from harness.api import Check, Optimization, TrainAPI, hookimpl
from harness.core.checks import loss_check

# Inductor fuses and reorders reductions: measured |diff| of the loss after K steps ~5e-7 on nano in fp32.
# Under bf16/fp16 autocast its fused kernels round at other points than eager's, so the mixed-precision
# tolerance applies (and it does whenever the two sides differ in precision).
LOSS_ATOL = {"fp32": 1e-3, "tf32": 1e-3}


@dataclass
class CompileParams:
    """Parameters of torch_compile."""

    mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = field(
        default="default", metadata={"help": "torch.compile mode; reduce-overhead adds CUDA graphs (CUDA only)"})


class TorchCompile(Optimization):
    """torch.compile(model, mode=...); compile time lands in the first call, which the worker keeps apart."""

    name = "torch_compile"
    requires = TrainAPI
    description = "torch.compile (Inductor) of the model; loss after K steps equals eager within tolerance."
    Params = CompileParams

    def supports(self, env: dict[str, Any]) -> str | None:
        if str(env.get("device", "cpu")).startswith("cuda"):
            if importlib.util.find_spec("triton") is None:
                return "Inductor on CUDA needs triton, which is not installed"
            return None
        if self.params.mode == "reduce-overhead":
            return "mode reduce-overhead records CUDA graphs: it needs a CUDA device"
        if not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
            return "Inductor on CPU needs a C++ compiler (g++ or clang++) on PATH"
        return None

    def apply(self, run: TrainAPI) -> None:
        run.model = torch.compile(run.model, mode=self.params.mode)
        run.knobs.count_activations = False  # saved-tensor hooks would force graph breaks
        run.info["compile_mode"] = self.params.mode

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        precision = optimized.get("precision", "fp32")
        same = precision == baseline.get("precision", "fp32")
        atol = LOSS_ATOL.get(precision, MIXED_ATOL) if same else MIXED_ATOL
        return [loss_check("loss_close_to_eager", baseline, optimized, atol)]


@hookimpl
def register_optimizations(register):
    register(TorchCompile)
