"""Write the synthetic results files the report/compare/export tests read (results-cpu.json, results-gpu.json).

They follow docs/results.md exactly but their samples are drawn from a seeded RNG: they test rendering and
comparison, they are not measurements. Each case is timed as the worker times it, in pairs of blocks (PAIRS pairs,
BLOCK samples per block, a random order per pair) with a drift per pair that both sides of the pair share, and
compared by harness.core.stats.compare; the CPU file holds a busy case (foreign load over the threshold: inconclusive)
and a noisy one whose interval is too wide (inconclusive). Re-run with `.venv/bin/python tests/data/make_fixtures.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from harness.core.stats import compare, summarize, warnings_for

HERE = Path(__file__).parent
GIB = 2**30
PAIRS, BLOCK, THRESHOLD = 12, 3, 0.1
ADVICE = ("the case's 2 threads shared cores with other work (about 1.4 of 2 cores were free): OpenMP barriers stall "
          "when one thread loses its core; measure when the machine is quiet, or set `threads: 1` in the suite")


def side(blocks, tokens_per_step, samples_per_step, peak, breakdown, extra, info, energy=None):
    """One SIDE from its timed blocks (seconds), plus throughput, memory and extras."""
    data = [x for b in blocks for x in b]
    lat = summarize(data, blocks=[len(b) for b in blocks])
    out = {
        "latency": lat,
        "throughput": {"tokens_per_s": tokens_per_step / lat["median"],
                       "samples_per_s": samples_per_step / lat["median"]},
        "compile_s": lat["median"] * 1.5,
        "memory": {"peak_bytes": peak, "source": info.pop("_mem_source", "cpu_vmhwm"), "breakdown": breakdown},
        "energy": energy,
        "extra": extra,
        "info": info,
    }
    return out


def timed_pairs(rng, b_med, o_med, noise, drift=0.04):
    """PAIRS pairs of BLOCK samples per side: a drift factor per pair (the machine's state, shared by both sides
    of a pair) times independent noise per sample. Returns (baseline blocks, optimized blocks, orders)."""
    base, opt, orders = [], [], []
    for _ in range(PAIRS):
        f = rng.lognormvariate(0, drift)
        base.append([b_med * f * rng.lognormvariate(0, noise) for _ in range(BLOCK)])
        opt.append([o_med * f * rng.lognormvariate(0, noise) for _ in range(BLOCK)])
        orders.append(rng.choice(("BO", "OB")))
    return base, opt, orders


def foreign_load(rng, busy):
    """measurement.foreign_load: a quiet machine, or (busy) one where other work took about a third of it."""
    per_pair = [rng.uniform(0.2, 0.42) if busy and i % 4 else rng.uniform(0.0, 0.04) for i in range(PAIRS)]
    foreign = sum(per_pair) / PAIRS
    return {"foreign_cpu": foreign, "steal": 0.004, "per_pair": per_pair, "loadavg_1m": 1.9 if busy else 0.7,
            "gpu_other_processes": None, "cores": 2, "threshold": THRESHOLD, "busy": busy,
            "reason": f"machine busy: foreign CPU {foreign:.0%} of 2 cores" if busy else None,
            "advice": ADVICE if busy else None}


def case(rng, cid, wl, spec, kind, plugins, b_med, o_med, b_peak, o_peak, tokens, samples, checks, cuda=False,
         b_extra=None, o_extra=None, energy=None, noise=0.03, busy=False):
    """An ok CASE with both sides timed in pairs of blocks, the comparison computed by harness.core.stats, and noise
    warnings. busy: other work loaded the machine (the verdict is withheld)."""
    src = "cuda_max_memory_allocated" if cuda else "cpu_vmhwm"

    def breakdown(peak, act_share):
        w = int(peak * 0.15)
        if kind == "training":
            return {"weights": w, "gradients": w, "optimizer_states": 2 * w, "activations": int(peak * act_share),
                    "kv_cache": 0}
        return {"weights": w, "gradients": 0, "optimizer_states": 0, "activations": int(peak * 0.05),
                "kv_cache": int(peak * act_share)}

    en_b = en_o = None
    if energy:
        src_e = "nvml_energy_counter"
        en_b = {"joules_per_step": energy * b_med, "window_s": 2.1, "avg_power_w": energy, "source": src_e}
        en_o = {"joules_per_step": energy * o_med, "window_s": 2.1, "avg_power_w": energy, "source": src_e}
    b_blocks, o_blocks, orders = timed_pairs(rng, b_med, o_med, noise)
    load = foreign_load(rng, busy)
    base = side(b_blocks, tokens, samples, b_peak, breakdown(b_peak, 0.3), dict(b_extra or {}),
                {"dtype": "float32", "_mem_source": src}, en_b)
    opt = side(o_blocks, tokens, samples, o_peak, breakdown(o_peak, 0.2), dict(o_extra or {}),
               {"dtype": "bfloat16" if "mixed" in cid else "float32", "_mem_source": src}, en_o)
    comp = compare(b_blocks, o_blocks, busy=load["reason"])
    comp["memory_ratio"] = o_peak / b_peak
    warnings = warnings_for("baseline", base["latency"]["data"]) + warnings_for("optimized", opt["latency"]["data"])
    if busy:
        warnings.append(f"{load['reason']}: no faster/slower verdict; {ADVICE}")
    return {
        "id": cid, "workload": {"name": wl, "type": "train" if kind == "training" else "decode", "spec": spec},
        "kind": kind, "plugins": plugins, "baseline_plugins": [], "status": "ok", "error": None,
        "duration_s": round(PAIRS * BLOCK * (b_med + o_med) + 2.0, 2),
        "measurement": {"timer": "wall_sync", "l2_flush": False, "design": "paired blocks, random order",
                        "pairs": PAIRS, "order": orders, "block_samples": {"baseline": BLOCK, "metrics": BLOCK},
                        "stopped_by": "minimums", "foreign_load": load,
                        "num_threads": None if cuda else 2, "processes": 1,
                        # the worker records warm-up per side; the schema's example shows one number: cover both
                        "warmup_s": {"baseline": 0.41, "metrics": 0.52} if cuda else 0.4},
        "baseline": base, "metrics": opt, "comparison": comp, "checks": checks, "warnings": warnings,
    }


def failed(cid, wl, spec, kind, plugins, status, error):
    return {"id": cid, "workload": {"name": wl, "type": "train" if kind == "training" else "decode", "spec": spec},
            "kind": kind, "plugins": plugins, "baseline_plugins": [], "status": status, "error": error,
            "duration_s": 4.2, "measurement": None, "checks": [], "warnings": []}


def loss_check(b, o, ok=True):
    return {"name": "loss_close", "passed": ok, "values": {"baseline": b, "optimized": o}, "tolerance": "abs 0.05"}


def tokens_check(ok=True, agree=1.0):
    return {"name": "greedy_tokens_identical", "passed": ok, "values": {"agreement": agree}, "tolerance": "exact"}


def decode_cases(rng, cuda, batches, scale):
    out = []
    for b in batches:
        spec = {"model": "nano", "batch": b, "prompt_len": 64, "new_tokens": 64}
        b_med, o_med = 0.40 * scale * (1 + 0.1 * b), 0.12 * scale * (1 + 0.05 * b)
        b_ex = {"ttft_s": 0.004 * scale, "tpot_s": b_med / 64, "mbu": 0.01, "regime": "launch-bound"}
        o_ex = {"ttft_s": 0.004 * scale, "tpot_s": o_med / 64, "mbu": 0.03, "regime": "launch-bound"}
        out.append(case(rng, f"decode-nano(batch={b})/kv_cache", "decode-nano", spec, "inference",
                        [{"name": "kv_cache", "params": {}}], b_med, o_med, 60_000_000, 64_000_000, 64 * b, b,
                        [tokens_check()], cuda=cuda, b_extra=b_ex, o_extra=o_ex,
                        energy=310.0 if cuda else None, busy=not cuda and b == 16))
    return out


def environment(cuda: bool) -> dict:
    env = {
        "hostname": "gpu-box" if cuda else "ci-runner", "os": "Linux-6.1.0-x86_64", "python": "3.11.7",
        "torch": "2.13.0+cu130" if cuda else "2.13.0+cpu",
        "cpu": {"model": "AMD EPYC 9654" if cuda else "AMD EPYC 7B13", "cores_physical": 16 if cuda else 2,
                "cores_logical": 32 if cuda else 2, "memory_bytes": 128 * GIB if cuda else 25 * GIB},
        "device": "cuda:0" if cuda else "cpu",
        "threads": {"torch_num_threads": 16 if cuda else 2, "OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None},
        "precision": {"allow_tf32_matmul": False, "float32_matmul_precision": "highest", "cudnn_allow_tf32": True},
        "cuda": None, "nvml": "unavailable", "peak": None,
        "git": {"commit": "01285d9" if cuda else "b90d0ea", "dirty": False},
    }
    if cuda:
        env["cuda"] = {"devices": [{"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85_031_714_816,
                                    "capability": "9.0", "sm_count": 132, "l2_bytes": 52_428_800,
                                    "bf16_native": True}], "cuda_version": "13.0", "cudnn": 91000}
        env["nvml"] = {"driver": "580.159.04", "power_limit_w": 700, "sm_clock_max_mhz": 1980}
        env["peak"] = {"bf16_flops": 9.894e14, "fp16_flops": 9.894e14, "tf32_flops": 4.947e14, "fp32_flops": 6.7e13,
                       "bandwidth_bytes_s": 3.35e12, "source": "datasheet table (METHODOLOGY.md)"}
    return env


def results(cuda: bool) -> dict:
    rng = random.Random(1 if cuda else 0)
    train_spec = {"model": "nano", "batch": 8, "seq_len": 128}
    s = 0.05 if cuda else 1.0
    tok = 8 * 128
    cases = [
        case(rng, "train-nano/mixed_precision(dtype=bf16)", "train-nano", train_spec, "training",
             [{"name": "mixed_precision", "params": {"dtype": "bf16"}}],
             0.090 * s, (0.030 if cuda else 0.118) * s, 300_000_000, 270_000_000, tok, 8,
             [loss_check(5.121, 5.129)], cuda=cuda,
             b_extra={"loss": 5.121, "mfu": 0.05 if cuda else None, "model_tflops": 1.2},
             o_extra={"loss": 5.129, "mfu": 0.15 if cuda else None, "model_tflops": 3.6},
             energy=420.0 if cuda else None),
        case(rng, "train-nano/activation_checkpointing", "train-nano", train_spec, "training",
             [{"name": "activation_checkpointing", "params": {}}],
             0.090 * s, 0.118 * s, 300_000_000, 210_000_000, tok, 8, [loss_check(5.121, 5.121)], cuda=cuda,
             b_extra={"loss": 5.121}, o_extra={"loss": 5.121}, energy=400.0 if cuda else None),
    ]
    if not cuda:
        cases.append(case(rng, "train-nano/fused_adamw", "train-nano", train_spec, "training",
                          [{"name": "fused_adamw", "params": {}}], 0.090, 0.0895, 300_000_000, 300_000_000, tok, 8,
                          [loss_check(5.121, 5.121)], noise=0.15))
        cases.append(case(rng, "decode-nano(batch=1)/quantization(scheme=int8)", "decode-nano",
                          {"model": "nano", "batch": 1, "prompt_len": 64, "new_tokens": 64}, "inference",
                          [{"name": "quantization", "params": {"scheme": "int8"}}], 0.12, 0.31, 64_000_000,
                          40_000_000, 64, 1, [tokens_check(False, 0.81)],
                          b_extra={"ttft_s": 0.004, "tpot_s": 0.12 / 64},
                          o_extra={"ttft_s": 0.009, "tpot_s": 0.31 / 64}))
        cases.append(failed("train-micro/zero(stage=3)", "train-micro", {"model": "micro", "batch": 64, "seq_len": 512},
                            "training", [{"name": "zero", "params": {"stage": 3}}], "oom",
                            "MemoryError: could not allocate 1.5 GiB for the optimizer states (rank 1)"))
        cases.append(failed("decode-nano(batch=1)/cuda_graphs", "decode-nano",
                            {"model": "nano", "batch": 1, "prompt_len": 64, "new_tokens": 64}, "inference",
                            [{"name": "cuda_graphs", "params": {}}], "unsupported", "needs a CUDA device"))
    else:
        cases.append(case(rng, "decode-nano(batch=1)/cuda_graphs", "decode-nano",
                          {"model": "nano", "batch": 1, "prompt_len": 64, "new_tokens": 64}, "inference",
                          [{"name": "cuda_graphs", "params": {}}], 0.020, 0.0035, 60_000_000, 62_000_000, 64, 1,
                          [tokens_check()], cuda=True,
                          b_extra={"ttft_s": 0.0012, "tpot_s": 0.020 / 64, "mbu": 0.002, "regime": "launch-bound"},
                          o_extra={"ttft_s": 0.0010, "tpot_s": 0.0035 / 64, "mbu": 0.012, "regime": "launch-bound"},
                          energy=250.0))
    cases += decode_cases(rng, cuda, (1, 4, 16), 0.05 if cuda else 1.0)
    if not cuda:  # a change too small to matter, measured well: no significant difference
        cases.append(case(rng, "train-nano/optimizer_impl(impl=foreach)", "train-nano", train_spec, "training",
                          [{"name": "optimizer_impl", "params": {"impl": "foreach"}}], 0.090, 0.0897, 300_000_000,
                          300_000_000, tok, 8, [loss_check(5.121, 5.121)], noise=0.01))
    name = "gpu" if cuda else "cpu"
    return {
        "schema_version": 1, "run_id": f"fixture-{name}", "harness_version": "0.1.0",
        "started": "2026-11-23T10:45:12+00:00", "finished": "2026-11-23T10:47:40+00:00", "status": "complete",
        "suite": {"name": "quick", "path": "suites/quick.yaml",
                  "description": "Synthetic fixture for the report tests (seeded random samples, not a measurement).",
                  "measure": {"min_pairs": PAIRS, "min_samples": 10, "busy_threshold": THRESHOLD,
                              "min_effect": 0.05}, "comments": {}},
        "environment": environment(cuda),
        "cases": cases,
    }


if __name__ == "__main__":
    for cuda in (False, True):
        path = HERE / f"results-{'gpu' if cuda else 'cpu'}.json"
        path.write_text(json.dumps(results(cuda), indent=1) + "\n")
        print("wrote", path)
