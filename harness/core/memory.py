"""Peak memory of one step: CUDA allocator peaks (M2) or the process's VmHWM on CPU (M3)."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Callable
from typing import Any

from harness.core.device import sync

_LIBC = None


def tensor_bytes(tensors, seen: set | None = None) -> int:
    """Bytes of `tensors`, each piece of memory counted once: a tensor that shares its storage and place with one
    already counted (a tied input embedding and output head, a parameter listed by two modules) adds nothing.
    A DTensor counts its local shard; a wrapper subclass (torchao's quantized weights, which report the float
    dtype and shape) counts its inner packed tensors. `seen` carries what was counted across calls. None skipped.
    """
    seen = set() if seen is None else seen
    total = 0
    for t in tensors:
        if t is None:
            continue
        t = t.to_local() if hasattr(t, "to_local") else t
        if hasattr(t, "__tensor_flatten__"):
            total += tensor_bytes((getattr(t, name) for name in t.__tensor_flatten__()[0]), seen)
            continue
        if t.is_quantized:  # torch.ao quantized tensors have no plain storage pointer
            total += t.numel() * t.element_size()
            continue
        key = (str(t.device), t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if t.numel() and key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _trim_heap() -> None:
    """Give freed heap pages back to the OS, so a step's RSS growth shows in VmHWM (glibc only)."""
    global _LIBC
    if not sys.platform.startswith("linux"):
        return
    try:
        _LIBC = _LIBC or ctypes.CDLL("libc.so.6")
        _LIBC.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def proc_status_bytes(key: str) -> int | None:
    """A `VmRSS`/`VmHWM` line of /proc/self/status in bytes, None where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (write 5 to clear_refs); False if the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_bytes(device: Any) -> int | None:
    """Bytes in use now: CUDA tensors allocated, or the process's resident set on CPU."""
    import torch

    if str(device).startswith("cuda"):
        sync(device)
        return torch.cuda.memory_allocated(device)
    _trim_heap()
    return proc_status_bytes("VmRSS")


def peak_of(fn: Callable[[], Any], device: Any, cpu_repeats: int = 2) -> dict[str, Any]:
    """Run `fn` and return the peak bytes in use during it (absolute: subtract a `current_bytes` taken before
    the side was built to get what one side holds). On CUDA one run (the allocator's peak is exact); on CPU the
    smallest VmHWM of `cpu_repeats` runs: a one-time RSS growth (a new malloc arena, a lazily made thread pool)
    shows in one run only, and is not what the step needs."""
    import torch

    if str(device).startswith("cuda"):
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        stats = torch.cuda.memory_stats(device)
        return {"peak": torch.cuda.max_memory_allocated(device), "source": "cuda_max_memory_allocated",
                "reserved_peak": torch.cuda.max_memory_reserved(device),
                "num_alloc_retries": stats.get("num_alloc_retries", 0), "num_ooms": stats.get("num_ooms", 0)}
    peaks = []
    for _ in range(cpu_repeats):
        _trim_heap()
        if not reset_hwm():
            fn()
            return {"peak": None, "source": "unavailable (/proc/self/clear_refs not writable)"}
        fn()
        peaks.append(proc_status_bytes("VmHWM"))
    if None in peaks:
        return {"peak": None, "source": "unavailable (no /proc/self/status)"}
    return {"peak": min(peaks), "source": "cpu_vmhwm"}


@contextlib.contextmanager
def saved_for_backward(model: Any):
    """Yield a dict, storage address -> bytes, of every tensor autograd saves for backward inside the block,
    `model`'s parameters excluded (they are weights, not activations), each storage once."""
    import torch  # here: the report imports this module without torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: Any) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved
