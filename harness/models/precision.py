"""Numeric precision: the one table of dtype names, a run's matmul precision by name, the peak FLOP/s it is
measured against (MFU), and the contexts that set it (TF32 on CUDA, torch.autocast)."""

from __future__ import annotations

import contextlib

import torch

from harness.core.errors import InputError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}
PEAK_KEYS = {torch.bfloat16: "bf16_flops", torch.float16: "fp16_flops"}  # harness.core.env's peak table


def resolve_dtype(dtype) -> torch.dtype | None:
    """None, a torch.dtype, or one of the names fp32 / bf16 / fp16 (and their long forms); InputError else."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'; known: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def matmul_precision(device_type: str, autocast_dtype: torch.dtype | None, tf32: bool) -> str:
    """"bfloat16" / "float16" (autocast), "tf32" (CUDA with TF32 allowed) or "fp32"."""
    if autocast_dtype is not None:
        return str(autocast_dtype).removeprefix("torch.")
    return "tf32" if device_type == "cuda" and tf32 else "fp32"


def peak_key(device_type: str, autocast_dtype: torch.dtype | None, tf32: bool) -> str:
    """Which peak of the environment's table (harness.core.env) matmuls in this precision run at."""
    if autocast_dtype in PEAK_KEYS:
        return PEAK_KEYS[autocast_dtype]
    return "tf32_flops" if device_type == "cuda" and tf32 else "fp32_flops"


@contextlib.contextmanager
def tf32_matmuls(device_type: str, allow: bool):
    """TF32 matmuls and convolutions allowed or not on CUDA for the block, the previous setting restored after;
    nothing elsewhere."""
    if device_type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(device_type: str, dtype: torch.dtype | None):
    """torch.autocast in `dtype`, or no context for None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)
