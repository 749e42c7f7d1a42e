"""The environment block: CPU, memory, OS, Python, torch, threads, GPUs (torch + NVML), datasheet peaks (O2)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from typing import Any

# Dense peaks (no 2:4 sparsity), FLOP/s and bytes/s, from the table in METHODOLOGY.md section 6. Matched on
# torch.cuda.get_device_name(); an unknown device gets no peak (MFU/MBU "n/a"), never a guess.
PEAKS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"fp32_flops": 51e12, "tf32_flops": 378e12, "bf16_flops": 756e12, "fp16_flops": 756e12,
                  "bandwidth_bytes_s": 2.0e12},
    "H100 80GB HBM3": {"fp32_flops": 67e12, "tf32_flops": 494.7e12, "bf16_flops": 989.4e12,
                       "fp16_flops": 989.4e12, "bandwidth_bytes_s": 3.35e12},
    "H100 SXM": {"fp32_flops": 67e12, "tf32_flops": 494.7e12, "bf16_flops": 989.4e12, "fp16_flops": 989.4e12,
                 "bandwidth_bytes_s": 3.35e12},
    "H200": {"fp32_flops": 67e12, "tf32_flops": 494.7e12, "bf16_flops": 989e12, "fp16_flops": 989e12,
             "bandwidth_bytes_s": 4.8e12},
    "A100-SXM4-80GB": {"fp32_flops": 19.5e12, "tf32_flops": 156e12, "bf16_flops": 312e12, "fp16_flops": 312e12,
                       "bandwidth_bytes_s": 2.039e12},
    "A100-PCIE-80GB": {"fp32_flops": 19.5e12, "tf32_flops": 156e12, "bf16_flops": 312e12, "fp16_flops": 312e12,
                       "bandwidth_bytes_s": 1.935e12},
    "A100": {"fp32_flops": 19.5e12, "tf32_flops": 156e12, "bf16_flops": 312e12, "fp16_flops": 312e12,
             "bandwidth_bytes_s": 1.555e12},  # 40 GB
    "L40S": {"fp32_flops": 91.6e12, "tf32_flops": 183e12, "bf16_flops": 362e12, "fp16_flops": 362e12,
             "bandwidth_bytes_s": 0.864e12},
    "L4": {"fp32_flops": 30.3e12, "tf32_flops": 60e12, "bf16_flops": 121e12, "fp16_flops": 121e12,
           "bandwidth_bytes_s": 0.3e12},
    "A10": {"fp32_flops": 31.2e12, "tf32_flops": 62.5e12, "bf16_flops": 125e12, "fp16_flops": 125e12,
            "bandwidth_bytes_s": 0.6e12},
    "T4": {"fp32_flops": 8.1e12, "fp16_flops": 65e12, "bandwidth_bytes_s": 0.32e12},  # no bf16/tf32 tensor cores
    "RTX 4090": {"fp32_flops": 82.6e12, "tf32_flops": 82.6e12, "bf16_flops": 165.2e12, "fp16_flops": 165.2e12,
                 "bandwidth_bytes_s": 1.008e12},
    "B200": {"tf32_flops": 1.1e15, "bf16_flops": 2.25e15, "fp16_flops": 2.25e15, "bandwidth_bytes_s": 8.0e12},
}


def peak_for(device_name: str) -> dict[str, Any] | None:
    """Datasheet peaks for a GPU name, longest matching key first (so "H100 PCIe" beats "H100"); else None."""
    for key in sorted(PEAKS, key=len, reverse=True):
        if key.lower() in device_name.lower():
            return {**PEAKS[key], "matched": key, "source": "datasheet table (METHODOLOGY.md section 6)"}
    return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Cores this process may use (affinity), counting SMT siblings once where /proc/cpuinfo tells."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        siblings = [int(x.split(":")[1]) for x in text.splitlines() if x.startswith("siblings")]
        cores = [int(x.split(":")[1]) for x in text.splitlines() if x.startswith("cpu cores")]
        if siblings and cores and siblings[0] > cores[0]:
            return max(1, usable * cores[0] // siblings[0])
    except (OSError, ValueError, IndexError):
        pass
    return usable


def memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def git_info() -> dict[str, Any]:
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return {"commit": commit or None, "dirty": bool(git("status", "--porcelain")) if commit else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def detect(device: str = "auto", threads: int | None = None) -> dict[str, Any]:
    """The environment block for `device` ("auto", "cpu", "cuda", "cuda:N"). NVML failures never raise."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    env: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "executable": sys.executable,
        "cpu": {"model": cpu_model(), "cores_physical": physical_cores(), "cores_logical": os.cpu_count(),
                "memory_bytes": memory_bytes()},
        "threads": {"torch_num_threads": torch.get_num_threads(),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS")},
        "precision": {"allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                      "float32_matmul_precision": torch.get_float32_matmul_precision(),
                      "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32},
        "cuda": cuda_info() if torch.cuda.is_available() else None,
        "git": git_info(),
    }
    env["device"] = resolve_device(device, env)
    env["nvml"] = nvml_info(env["device"]) if env["cuda"] else "unavailable"
    if env["device"].startswith("cuda"):
        index = int(env["device"].split(":")[1])
        env["peak"] = peak_for(env["cuda"]["devices"][index]["name"])
    else:
        env["peak"] = None  # CPU peaks are not tabulated: MFU/MBU "n/a"
    return env


MAX_CUDA_INDEX = 1024  # cuda:N above this names no device any machine has
MAX_THREADS = 4096  # suite threads / --threads: more than any machine's cores


def device_problem(device: Any) -> str | None:
    """Why `device` is not a device harness can name (auto, cpu, cuda, cuda:N with N < MAX_CUDA_INDEX), else
    None. Checked without looking for the hardware (`resolve_device` looks)."""
    text = device if isinstance(device, str) else ""
    index = text.removeprefix("cuda:") if text.startswith("cuda:") else None
    if index is not None and index.isascii() and index.isdigit() and (len(index) > 6 or int(index) >= MAX_CUDA_INDEX):
        return f"device {_shown(text)}: a CUDA device index is below {MAX_CUDA_INDEX:,}"
    if text in ("auto", "cpu", "cuda") or index is not None and index.isascii() and index.isdigit():
        return None
    return f"unknown device {_shown(device)}: use auto, cpu, cuda or cuda:N (N = 0, 1, ...)"


def _shown(value: Any) -> str:
    """repr(value), cut to 60 characters: an error echoes what it refuses, not a megabyte of it."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def resolve_device(device: str, env: dict[str, Any]) -> str:
    """"auto" -> "cuda:0" when a GPU is there, else "cpu"; "cuda" -> "cuda:0". Raises ValueError if absent."""
    problem = device_problem(device)
    if problem:
        raise ValueError(problem)
    devices = (env["cuda"] or {}).get("devices", [])
    if device == "auto":
        return "cuda:0" if devices else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= len(devices):
            found = (f"{len(devices)} CUDA device(s)" if devices
                     else "no CUDA device (torch.cuda.is_available() is False)")
            raise ValueError(f"device '{device}' is not here: found {found}")
        return f"cuda:{index}"
    raise ValueError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N")


def cuda_info() -> dict[str, Any]:
    import torch

    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append({"name": p.name, "memory_bytes": p.total_memory, "capability": f"{p.major}.{p.minor}",
                        "sm_count": p.multi_processor_count, "l2_bytes": getattr(p, "L2_cache_size", None),
                        "bf16_native": (p.major, p.minor) >= (8, 0)})
    return {"devices": devices, "cuda_version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}


def nvml_info(device: str) -> dict[str, Any] | str:
    """Driver, power limit, clocks, persistence and MIG mode through NVML; "unavailable" if NVML fails."""
    from harness.core.energy import nvml_handle

    index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    handle = nvml_handle(index)
    if handle is None:
        return "unavailable"
    import pynvml

    info: dict[str, Any] = {}
    reads = {
        "driver": lambda: pynvml.nvmlSystemGetDriverVersion(),
        "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3,
        "sm_clock_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "sm_clock_now_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "persistence_mode": lambda: pynvml.nvmlDeviceGetPersistenceMode(handle),
        "mig_mode": lambda: pynvml.nvmlDeviceGetMigMode(handle)[0],
        "energy_counter": lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) is not None,
    }
    for key, read in reads.items():
        try:
            value = read()
            info[key] = value.decode() if isinstance(value, bytes) else value
        except Exception:
            info[key] = None
    return info


def probe(device: str) -> dict[str, Any]:
    """Measured ceilings (U4): bf16 8192^3 matmul FLOP/s and a 1 GiB device-to-device copy (read + write)."""
    import torch

    from harness.core.timing import MeasureSettings, measure

    if not device.startswith("cuda"):
        raise ValueError("--probe measures GPU ceilings; it needs a CUDA device")
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    settings = MeasureSettings(min_time_s=0.5, max_time_s=3, energy=False)
    mm = measure(lambda: a @ b, device, settings)
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    cp = measure(lambda: dst.copy_(src), device, settings)
    return {"bf16_matmul_flops": 2 * n**3 / mm["median"], "copy_bytes_s": 2 * 2**30 / cp["median"],
            "timer": "wall_sync"}
