"""Quantization of the Linear weights: int8 dynamic (CPU), int8 weight-only (plain PyTorch or torchao),
int4 weight-only and fp8 (CUDA, torchao). Fewer bytes per token; speed is whatever the kernels make of it."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Check, GenerateAPI, Optimization, ParamError, hookimpl
from harness.models.accounting import weight_bytes


@dataclass
class QuantizationParams:
    method: Literal["int8_dynamic", "int8_weight_only", "int4_weight_only", "fp8"] = field(
        default="int8_dynamic", metadata={"help": "int8_dynamic: torch.ao quantize_dynamic (CPU, fp32 model); "
                                                  "int8_weight_only: per-channel int8 weights; int4_weight_only, "
                                                  "fp8: torchao on CUDA"})
    backend: Literal["auto", "torch", "torchao"] = field(
        default="auto", metadata={"help": "weight-only kernels: torchao when installed (auto), or plain PyTorch"})
    max_ppl_increase: float = field(
        default=0.02, metadata={"help": "check bound: perplexity may grow by at most this fraction"})

    def __post_init__(self) -> None:
        if not 0 <= self.max_ppl_increase < 10:
            raise ParamError("max_ppl_increase", f"must be in [0, 10) (got {self.max_ppl_increase})")


def has_torchao() -> bool:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def int8pack_mm_runs(device: str) -> bool:
    """Whether torch._weight_int8pack_mm has a kernel on `device`: the CPU one since it exists, CUDA's only
    from torch 2.9 (pytorch PR #159325, aten/src/ATen/native/cuda/int8mm.cu); before, CUDA raises
    NotImplementedError, so the check runs it once on a tiny input."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False
    if device == "cpu":
        return True
    try:
        torch._weight_int8pack_mm(torch.ones(1, 8, device=device), torch.ones(1, 8, dtype=torch.int8, device=device),
                                  torch.ones(1, device=device))
    except (NotImplementedError, RuntimeError):
        return False
    return True


FUSED_MAX_ROWS = 16  # CUDA: _weight_int8pack_mm for decode-sized inputs only (see Int8WeightOnlyLinear)


class Int8WeightOnlyLinear(nn.Module):
    """Linear with int8 weights and one scale per output channel (symmetric); activations stay in their dtype.

    Kernel paths, counted in `calls`: "int8pack_mm" is torch._weight_int8pack_mm (int8 weights read by the
    kernel itself): on the CPU always, on CUDA for inputs of at most FUSED_MAX_ROWS rows (decode), since that
    kernel is a matrix-vector design that is slow for prefill and batched decode. "cast_linear" is gpt-fast's
    form, F.linear(x, weight cast to x's dtype) x scales: cuBLAS for large inputs, or where the fused kernel
    does not exist."""

    calls: dict[str, int] = {"int8pack_mm": 0, "cast_linear": 0}

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # [out, in]
        scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("weight", torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = linear.bias
        self.fused = int8pack_mm_runs(str(linear.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.size(-1)
        if self.fused and (x.device.type == "cpu" or rows <= FUSED_MAX_ROWS):
            Int8WeightOnlyLinear.calls["int8pack_mm"] += 1
            y = torch._weight_int8pack_mm(x.reshape(-1, x.size(-1)), self.weight, self.scales.to(x.dtype))
            y = y.view(*x.shape[:-1], -1)
        else:
            Int8WeightOnlyLinear.calls["cast_linear"] += 1
            y = F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        return y + self.bias if self.bias is not None else y


def int8_weight_only(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear by an Int8WeightOnlyLinear, in place."""
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, Int8WeightOnlyLinear(child))
        else:
            int8_weight_only(child)
    return model


def torchao_quantize(model: nn.Module, method: str) -> tuple[nn.Module, str]:
    """torchao's quantize_ with the config for `method` (new *Config names first, then the older functions);
    returns the model and the config used, as text. set_inductor_config=False keeps the process-wide Inductor
    settings (shared with the baseline side) unchanged; int4 uses the "tile_packed_to_4d" format, whose kernel
    (torch's _weight_int4pack_mm, tinygemm) ships with torch, where the config has that field."""
    import torchao.quantization as tq

    names = {"int8_weight_only": ("Int8WeightOnlyConfig", "int8_weight_only"),
             "int4_weight_only": ("Int4WeightOnlyConfig", "int4_weight_only"),
             "fp8": ("Float8WeightOnlyConfig", "float8_weight_only")}[method]
    make = next((getattr(tq, n) for n in names if hasattr(tq, n)), None)
    if make is None:
        raise RuntimeError(f"this torchao has none of {names}")
    accepted = ({f.name for f in dataclasses.fields(make)} if dataclasses.is_dataclass(make)
                else set(inspect.signature(make).parameters))
    kwargs: dict[str, Any] = {}
    if "set_inductor_config" in accepted:
        kwargs["set_inductor_config"] = False
    if method == "int4_weight_only" and "int4_packing_format" in accepted:
        kwargs["int4_packing_format"] = "tile_packed_to_4d"
    tq.quantize_(model, make(**kwargs))
    return model, f"torchao {make.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


class Quantization(Optimization):
    """Quantize the model's Linear layers; check perplexity on held-out text against the unquantized model."""

    name = "quantization"
    requires = GenerateAPI
    description = "int8/int4/fp8 weights; perplexity change within a bound, top-1 agreement and bytes reported"
    Params = QuantizationParams

    def supports(self, env: dict[str, Any]) -> str | None:
        cuda = str(env.get("device", "cpu")).startswith("cuda")
        method = self.params.method
        if method == "int8_dynamic" and cuda:
            return "quantize_dynamic runs on CPU only; on CUDA use method: int8_weight_only"
        if method in ("int4_weight_only", "fp8"):
            if not cuda:
                return f"{method} needs CUDA kernels (torchao); on CPU use int8_dynamic or int8_weight_only"
            if not has_torchao():
                return f"{method} needs torchao (pip install 'harness[torchao]')"
        if method == "fp8":
            caps = [d.get("capability", "0") for d in ((env.get("cuda") or {}).get("devices") or [])]
            if caps and float(caps[0]) < 8.9:
                return f"fp8 needs compute capability >= 8.9 (Ada/Hopper); this GPU is {caps[0]}"
        if self.params.backend == "torchao" and not has_torchao():
            return "backend: torchao asked for but torchao is not installed"
        return None

    def validate(self, spec: Any, plugins: list) -> None:
        if self.params.method == "int8_dynamic" and spec.dtype != "fp32":
            raise ParamError("method", f"int8_dynamic quantizes an fp32 model (the workload has dtype: {spec.dtype})")
        if (self.params.backend == "torchao" or self.params.method in ("int4_weight_only", "fp8")) \
                and not has_torchao():
            raise ParamError("backend" if self.params.backend == "torchao" else "method",
                             f"{self.params.method} with torchao needs torchao installed (pip install "
                             "'harness[torchao]')")

    def apply(self, run: GenerateAPI) -> None:
        before = weight_bytes(run.model)
        method = self.params.method
        use_ao = self.params.backend == "torchao" or (
            self.params.backend == "auto" and run.device.type == "cuda" and has_torchao())
        if method == "int8_dynamic":  # an fp32 model (validate) on the CPU (supports)
            with warnings.catch_warnings():  # torch.ao quantized tensors warn that they are deprecated
                warnings.simplefilter("ignore")
                run.model = torch.ao.quantization.quantize_dynamic(run.model, {nn.Linear}, dtype=torch.qint8)
            kernel, use_ao = "torch.ao quantize_dynamic (quantized::linear_dynamic, fbgemm)", False
        elif method == "int8_weight_only" and not use_ao:
            run.model = int8_weight_only(run.model)
            fused = int8pack_mm_runs(run.device.type)
            kernel = ("torch._weight_int8pack_mm" if fused and run.device.type == "cpu" else
                      f"torch._weight_int8pack_mm for <= {FUSED_MAX_ROWS} rows, else int8 weight cast + F.linear "
                      "x scales (gpt-fast)" if fused else "int8 weight cast + F.linear x scales (gpt-fast)")
            start = dict(Int8WeightOnlyLinear.calls)
            run.knobs.metric_fns.append(lambda median_s: {"int8_kernel_calls": {
                k: Int8WeightOnlyLinear.calls[k] - start[k] for k in start}})
        else:
            run.model, kernel = torchao_quantize(run.model, method)
        after = weight_bytes(run.model)
        run.info.update(quantization=method, quantization_backend="torchao" if use_ao else "torch",
                        quantization_kernel=kernel, weight_bytes_before=before, weight_bytes_after=after)

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        ppl0, ppl1 = baseline["perplexity"], optimized["perplexity"]
        top1 = float((baseline["top1"] == optimized["top1"]).float().mean())
        bound = self.params.max_ppl_increase
        return [
            Check("perplexity_within_bound", ppl1 <= ppl0 * (1 + bound),
                  {"baseline": ppl0, "optimized": ppl1, "relative_change": ppl1 / ppl0 - 1, "top1_agreement": top1,
                   "weight_bytes_baseline": baseline["weight_bytes"],
                   "weight_bytes_optimized": optimized["weight_bytes"]},
                  f"perplexity <= baseline x (1 + {bound})"),
            Check("weights_smaller", optimized["weight_bytes"] < baseline["weight_bytes"],
                  {"baseline": baseline["weight_bytes"], "optimized": optimized["weight_bytes"],
                   "ratio": optimized["weight_bytes"] / baseline["weight_bytes"]}, "optimized < baseline"),
        ]


@hookimpl
def register_optimizations(register) -> None:
    register(Quantization)
