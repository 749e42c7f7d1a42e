"""What a measured speed costs: $ per 1M tokens, per step, per 1B training tokens, energy per token.

Formulas (EFFECTS.md, "Cost framing"): $/1M tokens = price per device-hour / (3600 * tokens/s) * 1e6; a step costs
price / 3600 * step time; inference spending passes the training bill after training cost / cost per query
queries. Prices are inputs, not measurements: EXAMPLE_PRICES are example on-demand list prices that a user
overrides with `--price-per-hour` or a `--prices` YAML file; an unknown device without a price gets "n/a",
never a guess.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from harness.core import yamlsafe
from harness.core.errors import InputError

# Example on-demand prices in USD per device-hour, for illustration only: they differ by provider, region and
# commitment. Keys are matched as case-insensitive substrings of the CUDA device name, longest key first.
EXAMPLE_PRICES: dict[str, float] = {
    "H200": 3.50,
    "H100": 2.50,
    "A100": 1.50,
    "L40S": 1.00,
    "L4": 0.70,
    "A10": 0.75,
    "T4": 0.35,
}
EXAMPLE_SOURCE = ("example on-demand price (harness.core.cost.EXAMPLE_PRICES; override with --price-per-hour USD or "
                  "--prices FILE.yaml)")
JOULES_PER_KWH = 3.6e6


def load_prices(path: str | Path) -> dict[str, float]:
    """Read a prices YAML file: a mapping of device-name substring (e.g. ``H100``, ``cpu``) to USD per hour.
    Read through `harness.core.yamlsafe` (bounded); InputError naming the file, line and device otherwise."""
    data, node = yamlsafe.load(path, "prices file")
    if not isinstance(data, dict) or not data:
        raise InputError("expected a mapping of device name to USD per hour, e.g. 'H100: 2.5'", path=str(path),
                         line=node.start_mark.line + 1 if node is not None else None)
    lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}
    out = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise InputError(f"price must be a positive number of USD per hour, got {value!r}",
                             path=str(path), line=lines.get(str(key)), field=str(key))
        out[str(key)] = float(value)
    return out


def device_name(env: dict[str, Any]) -> str:
    """The device a run used, as a readable name: the CUDA device name, else the CPU model."""
    cuda = env.get("cuda") or {}
    devices = cuda.get("devices") or []
    if str(env.get("device", "cpu")).startswith("cuda") and devices:
        index = int(str(env["device"]).partition(":")[2] or 0)
        return devices[min(index, len(devices) - 1)]["name"]
    return "cpu: " + str((env.get("cpu") or {}).get("model", "unknown"))


def price_for(env: dict[str, Any], price_per_hour: float | None = None,
              prices: dict[str, float] | None = None) -> tuple[float, str] | None:
    """(USD per device-hour, where it came from) for a run's environment, or None when unknown."""
    if price_per_hour is not None:
        return float(price_per_hour), "given by the user"
    name = device_name(env).lower()
    tables = [(prices or {}, "prices file")]
    if not name.startswith("cpu"):  # the example table names GPUs only
        tables.append((EXAMPLE_PRICES, EXAMPLE_SOURCE))
    for table, source in tables:
        for key in sorted(table, key=len, reverse=True):
            if key.lower() in name:
                return table[key], source
    return None


def cost_unit(side: dict[str, Any]) -> str | None:
    """The unit costs are quoted per: tokens when the workload counts them, else the first unit it declares."""
    keys = list(side.get("throughput") or {})
    if "tokens_per_s" in keys:
        return "tokens"
    return keys[0].removesuffix("_per_s") if keys else None


def side_cost(side: dict[str, Any], price: float | None) -> dict[str, Any]:
    """Cost and energy figures of one measured side: $/step, $/1M and $/1B units, J/unit, kWh/1M units.

    The unit is `cost_unit(side)` (tokens when counted); the ``*_tokens`` keys repeat the figures when it is
    tokens and are None otherwise, so a reader never mistakes items or requests for tokens."""
    median = (side.get("latency") or {}).get("median")
    unit = cost_unit(side)
    rate = (side.get("throughput") or {}).get(f"{unit}_per_s") if unit else None
    units_per_step = rate * median if rate and median else None
    out: dict[str, Any] = {"unit": unit, "usd_per_step": None, "usd_per_1m_units": None, "usd_per_1b_units": None,
                           "joules_per_unit": None, "kwh_per_1m_units": None}
    if price is not None and median is not None:
        out["usd_per_step"] = price / 3600 * median
        if rate:
            out["usd_per_1m_units"] = price / (3600 * rate) * 1e6
            out["usd_per_1b_units"] = price / (3600 * rate) * 1e9
    energy = side.get("energy") or {}
    if energy.get("joules_per_step") is not None and units_per_step:
        out["joules_per_unit"] = energy["joules_per_step"] / units_per_step
        out["kwh_per_1m_units"] = out["joules_per_unit"] * 1e6 / JOULES_PER_KWH
    tokens = unit == "tokens"
    for name in ("usd_per_1m", "usd_per_1b", "kwh_per_1m"):
        out[f"{name}_tokens"] = out[f"{name}_units"] if tokens else None
    out["joules_per_token"] = out["joules_per_unit"] if tokens else None
    return out


def training_vs_inference(results: dict[str, Any], price: float | None, train_tokens: float = 1e9,
                          ) -> dict[str, Any] | None:
    """After how many queries inference spending passes the training bill, from the run's fastest ok sides.

    Training bill = `train_tokens` at the fastest measured training side's tokens/s; one query = one request,
    sequence or sample (the first of these the inference workload counts) of the fastest inference side, so cost
    per query = price / (3600 * queries/s).
    None when there is no price or the run lacks an ok training or inference case.
    """
    if price is None:
        return None
    units = {"training": ("tokens_per_s",), "inference": ("requests_per_s", "sequences_per_s", "samples_per_s")}
    best: dict[str, tuple[float, str, str, str]] = {}
    for case in results.get("cases", []):
        if case.get("status") != "ok" or case.get("kind") not in units:
            continue
        for side_name, key in (("baseline", "baseline"), ("optimized", "optimized")):
            throughput = (case.get(key) or {}).get("throughput") or {}
            unit = next((u for u in units[case["kind"]] if throughput.get(u)), None)
            if unit and throughput[unit] > best.get(case["kind"], (0.0,))[0]:
                best[case["kind"]] = (throughput[unit], case["id"], side_name, unit.removesuffix("_per_s"))
    if "training" not in best or "inference" not in best:
        return None
    (t_rate, t_case, t_side, _), (q_rate, q_case, q_side, q_unit) = best["training"], best["inference"]
    train_bill = price / (3600 * t_rate) * train_tokens
    per_query = price / (3600 * q_rate)
    return {
        "price_per_hour": price, "train_tokens": train_tokens,
        "training_case": t_case, "training_side": t_side, "training_tokens_per_s": t_rate,
        "training_bill_usd": train_bill,
        "inference_case": q_case, "inference_side": q_side, "queries_per_s": q_rate, "query_unit": q_unit,
        "usd_per_query": per_query,
        "breakeven_queries": train_bill / per_query,
    }
