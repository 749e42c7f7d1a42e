"""Mixed precision: matmuls under torch.autocast in bf16 or fp16 (fp16 with a GradScaler), fp32 weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from harness.api import Check, Optimization, TrainAPI, hookimpl
from harness.core.checks import loss_check
from harness.models.precision import resolve_dtype

# Final loss after K steps vs the fp32 run. Measured on nano / cpu presets, K=3-4: |diff| ~1e-3 (bf16),
# ~1e-4 (fp16); bf16 keeps 8 mantissa bits, so 0.02 on a loss of ~5.5 (0.4 %) leaves room for longer runs
# while a wrong update (lr, missing unscale) moves the loss by far more.
LOSS_ATOL = 0.02


@dataclass
class MixedPrecisionParams:
    """Parameters of mixed_precision."""

    dtype: Literal["bf16", "fp16"] = field(
        default="bf16", metadata={"help": "autocast dtype; fp16 adds a GradScaler (dynamic loss scaling)"})


def autocast_works(device_type: str, dtype: torch.dtype) -> str | None:
    """None if a matmul under autocast on `device_type` really runs in `dtype`, else why not."""
    try:
        with torch.autocast(device_type, dtype=dtype):
            a = torch.ones(2, 2, device=device_type)
            got = (a @ a).dtype
    except (RuntimeError, ValueError) as exc:
        return f"torch.autocast({device_type!r}, {dtype}) fails here: {exc}"
    if got != dtype:
        return f"torch.autocast({device_type!r}, {dtype}) runs matmuls in {got}, so it would measure nothing"
    return None


class MixedPrecision(Optimization):
    """Autocast the forward to bf16/fp16; fp32 weights and AdamW states (Micikevicius et al. 2018)."""

    name = "mixed_precision"
    requires = TrainAPI
    description = "torch.autocast bf16/fp16 (fp16 with GradScaler); loss after K steps close to fp32."
    Params = MixedPrecisionParams

    def supports(self, env: dict[str, Any]) -> str | None:
        device_type = str(env.get("device", "cpu")).split(":")[0]
        return autocast_works(device_type, resolve_dtype(self.params.dtype))

    def apply(self, run: TrainAPI) -> None:
        dtype = resolve_dtype(self.params.dtype)
        run.knobs.autocast_dtype = dtype
        run.info["autocast"] = str(dtype).removeprefix("torch.")
        if dtype == torch.float16:
            run.knobs.grad_scaler = torch.amp.GradScaler(run.device.type)
        if run.device.type == "cuda" and dtype == torch.bfloat16:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
            run.info["bf16"] = "native" if native else "emulated (no bf16 tensor cores: expect no speedup)"

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        checks = [loss_check("loss_close_to_fp32", baseline, optimized, LOSS_ATOL)]
        if "skipped_steps" in optimized:
            skipped, steps = optimized["skipped_steps"], len(optimized["losses"])
            # Skipped steps are normal while the scale finds its level; all skipped means nothing trained.
            checks.append(Check("grad_scaler_stepped", skipped < steps,
                                {"skipped_steps": skipped, "steps": steps}, "at least one step not skipped"))
        return checks


class TF32(Optimization):
    """TF32 tensor-core matmuls for the fp32 model (10-bit mantissa inputs, fp32 accumulate), CUDA sm80+."""

    name = "tf32"
    requires = TrainAPI
    description = "TF32 matmuls for fp32 training on CUDA (Ampere+); loss after K steps close to strict fp32."

    def supports(self, env: dict[str, Any]) -> str | None:
        if not str(env.get("device", "cpu")).startswith("cuda"):
            return "TF32 is a CUDA tensor-core mode; fp32 matmuls elsewhere are unaffected"
        devices = (env.get("cuda") or {}).get("devices") or [{}]
        capability = str(devices[0].get("capability", "0"))
        if float(capability) < 8.0:
            return f"TF32 needs compute capability >= 8.0 (Ampere); this GPU is {capability}"
        return None

    def apply(self, run: TrainAPI) -> None:
        run.knobs.tf32 = True
        run.info["tf32"] = True

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        return [loss_check("loss_close_to_fp32", baseline, optimized, LOSS_ATOL)]


@hookimpl
def register_optimizations(register):
    register(MixedPrecision)
    register(TF32)
