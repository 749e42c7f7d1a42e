"""DDP and ZeRO invariants across 2 gloo processes, launched with torchrun on a tiny script (no worker)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("distributed_training_script.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist") / "checks.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
           str(SCRIPT), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def by_name(checks: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in checks}


def test_ddp_params_equal_single_process(results):
    checks = by_name(results["ddp"])
    assert checks["params_equal_single_process"]["passed"], checks
    assert checks["loss_equal_single_process"]["passed"], checks
    info = results["ddp_info"]
    assert info["distributed"] is True and info["local_batch"] == 2  # each rank half of the global batch 4
    assert info["units"] == {"tokens": 4 * 32, "samples": 4}  # units stay global
    assert info["extra"]["tokens_per_s_per_process"] == pytest.approx(info["extra"]["tokens_per_s"] / 2)


def test_ddp_check_catches_a_wrong_learning_rate(results):
    checks = by_name(results["ddp_wrong_lr"])
    assert not checks["params_equal_single_process"]["passed"]
    assert checks["params_equal_single_process"]["values"]["max_abs_diff"] > 1e-4


@pytest.mark.parametrize("stage", ["zero1", "fsdp_grad_op", "fsdp_full"])
def test_zero_params_equal_ddp_and_memory_matches_formula(results, stage):
    checks = by_name(results[stage])
    assert all(c["passed"] for c in checks.values()), checks
    states = checks["optimizer_states_bytes_match_formula"]["values"]
    # every stage shards the Adam states: a rank holds about half of what DDP's rank holds
    assert states["measured_per_rank"] < 0.75 * states["baseline_per_rank"]
    grads = checks["gradients_bytes_match_formula"]["values"]
    weights = checks["weights_bytes_match_formula"]["values"]
    if stage == "zero1":
        assert grads["measured_per_rank"] == grads["baseline_per_rank"]
        assert weights["measured_per_rank"] == weights["baseline_per_rank"]
    else:
        assert grads["measured_per_rank"] == pytest.approx(grads["baseline_per_rank"] / 2, rel=0.02)
        assert weights["measured_per_rank"] == pytest.approx(weights["baseline_per_rank"] / 2, rel=0.02)


def test_worker_destroys_the_process_group_a_plugin_made_even_when_the_case_fails(tmp_path, monkeypatch):
    """A one-rank group (ddp at world_size 1) is destroyed after the result is written, failed case or not."""
    import torch.distributed as dist

    from harness.core import worker

    def failing_case(job):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        raise RuntimeError("the case failed after making its group")

    monkeypatch.setattr(worker, "run_case", failing_case)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"measure": {}, "env": {"device": "cpu"}}))
    assert worker.run_job(str(job), str(tmp_path / "result.json")) == 3
    assert not dist.is_initialized()
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "failed"

