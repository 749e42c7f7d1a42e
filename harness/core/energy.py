"""GPU board energy from NVML (E1-E5): the total-energy counter read around its own window, never per sample."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def nvml_handle(device_index: int):
    """The NVML handle of CUDA device `device_index`, or None when NVML is missing or fails (no driver, CPU
    machine): never raises. NVML numbers every GPU of the machine, CUDA only the visible ones
    (CUDA_VISIBLE_DEVICES; torch maps them in `torch.cuda._get_nvml_device_index`), so the GPU is found by
    its UUID; by index only where the UUID is unknown or unmatched (MIG)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        uuid = cuda_uuid(device_index)
        for i in range(pynvml.nvmlDeviceGetCount() if uuid else 0):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            found = pynvml.nvmlDeviceGetUUID(handle)  # "GPU-<8-4-4-4-12 hex>"
            found = found.decode() if isinstance(found, bytes) else str(found)
            if found.lower().removeprefix("gpu-") == uuid:
                return handle
    except Exception:
        pass
    try:
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception:
        return None


def cuda_uuid(device_index: int) -> str | None:
    """The CUDA device's UUID as 8-4-4-4-12 lowercase hex (str of torch's `_CUuuid`), None if unknown."""
    import torch

    if not torch.cuda.is_available():
        return None
    uuid = getattr(torch.cuda.get_device_properties(device_index), "uuid", None)
    return str(uuid).lower().removeprefix("gpu-") if uuid is not None else None


def energy_window(fn: Callable[[], Any], sync: Callable[[], None], device_index: int,
                  median_s: float, min_window_s: float = 2.0) -> dict[str, Any] | None:
    """Repeat `fn` for max(2 s, 20 x median step) between two counter reads taken after synchronizing.

    Returns joules per call, the window and average power, or None where the counter is unsupported.
    """
    handle = nvml_handle(device_index)
    if handle is None:
        return None
    import pynvml

    try:
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError:
        return None
    calls = max(1, int(max(min_window_s, 20 * median_s) / max(median_s, 1e-9)))
    sync()
    start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    window_s = time.perf_counter() - start
    joules = (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - start_mj) / 1e3
    out = {"joules_per_step": joules / calls, "window_s": window_s, "steps": calls,
           "avg_power_w": joules / window_s, "source": "nvml_energy_counter",
           "scope": "GPU board energy (NVML)"}
    try:
        limit_w = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3
        out["power_limit_w"] = limit_w
        out["power_capped"] = out["avg_power_w"] >= 0.95 * limit_w
    except pynvml.NVMLError:
        pass
    if window_s < 1.0:
        out["warning"] = "too short for energy"
    return out


def clock_state(device_index: int) -> dict[str, Any] | None:
    """SM clock, power, temperature and throttle reasons now (T9); None without NVML."""
    handle = nvml_handle(device_index)
    if handle is None:
        return None
    import pynvml

    state: dict[str, Any] = {}
    for key, read in (("sm_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
                      ("power_w", lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3),
                      ("temperature_c", lambda: pynvml.nvmlDeviceGetTemperature(handle, 0)),
                      ("throttle_reasons", lambda: throttle_reasons(pynvml, handle))):
        try:
            state[key] = read()
        except Exception:
            state[key] = None
    reasons = state.get("throttle_reasons") or 0
    # power cap 0x4, hw slowdown 0x8, sw thermal 0x20, hw thermal 0x40, power brake 0x80
    state["capped"] = bool(reasons & (0x4 | 0x8 | 0x20 | 0x40 | 0x80))
    return state


def throttle_reasons(pynvml, handle) -> int:
    """The clocks-event (throttle) reason bits. nvmlDeviceGetCurrentClocksEventReasons is the newer name
    (nvidia-ml-py 12.535+, driver R535+); older bindings and drivers have only ...ThrottleReasons, same bits."""
    try:
        return pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle)
    except (AttributeError, pynvml.NVMLError):
        return pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)


def violation_seconds(device_index: int) -> dict[str, float] | None:
    """Seconds the GPU's clocks have been held down by its power limit and by its thermal limit, as NVML's
    accumulated violation counters say (nvmlDeviceGetViolationStatus, violationTime in ns, since the driver
    started counting). Differences across a block say how much of it ran throttled, which a clock read at a
    block boundary, right after a synchronize, misses (T9). None without NVML or where the GPU has no counters."""
    handle = nvml_handle(device_index)
    if handle is None:
        return None
    import pynvml

    try:
        return {name: pynvml.nvmlDeviceGetViolationStatus(handle, policy).violationTime / 1e9
                for name, policy in (("power", pynvml.NVML_PERF_POLICY_POWER),
                                     ("thermal", pynvml.NVML_PERF_POLICY_THERMAL))}
    except (AttributeError, pynvml.NVMLError):
        return None


def throttle_record(counters: list[dict[str, float] | None], pair_seconds: list[float]) -> dict[str, Any] | None:
    """The case's throttling from `violation_seconds` read before the first pair and after each pair, and each
    pair's wall time: seconds throttled by power and by thermal limits, and the share of the timed wall time that
    was throttled (per pair: power + thermal, at most the pair's time). None when the counters were not read."""
    if len(counters) < 2 or any(c is None for c in counters):
        return None
    power = [b["power"] - a["power"] for a, b in zip(counters, counters[1:])]
    thermal = [b["thermal"] - a["thermal"] for a, b in zip(counters, counters[1:])]
    throttled = [min(t, p + h) for t, p, h in zip(pair_seconds, power, thermal)]
    wall = sum(pair_seconds) or 1.0
    return {"power_s": sum(power), "thermal_s": sum(thermal), "fraction": sum(throttled) / wall,
            "per_pair": [x / t if t else 0.0 for x, t in zip(throttled, pair_seconds)],
            "source": "nvml_violation_counters"}
