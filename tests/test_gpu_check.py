"""scripts/gpu-check, dry-run on the CPU: its steps run in order within their budgets and what comes back from
a device call fits the device tool's limits (at most 8 files, no folders, 64 MiB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_cpu_dry_run_packs_every_step_into_a_few_files(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([str(ROOT / "scripts/gpu-check"), "--cpu-dry-run"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["env.json", "gpu-check.log", "results.tar.gz", "summary.txt"]
    assert all((out / f).is_file() for f in files) and sum((out / f).stat().st_size for f in files) < 64 * 2**20
    log = (out / "gpu-check.log").read_text()
    starts = [log.find(f"s] {name}: ") for name in ("smoke", "gpu-training", "gpu-inference")]
    assert -1 not in starts and starts == sorted(starts), "steps out of order"
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        results = {n.split("/")[0]: json.load(tar.extractfile(n)) for n in names if n.endswith("/results.json")
                   and n.count("/") == 1}
    assert set(results) == {"smoke", "gpu-training", "gpu-inference"}
    for name, data in results.items():
        assert data["status"] == "complete" and len(data["cases"]) >= (2 if name == "smoke" else 1), name
        assert all(c["status"] in ("ok", "unsupported") for c in data["cases"]), [c.get("error") for c in
                                                                                 data["cases"]]
    assert results["smoke"]["cases"][0]["status"] == "unsupported"  # CUDA graphs first: the CUDA-only paths lead
    summary = (out / "summary.txt").read_text()
    assert [line.split(":")[0] for line in summary.splitlines() if not line.startswith(" ")] == [
        "smoke", "gpu-training", "gpu-inference"]
    assert json.loads((out / "env.json").read_text())["device"] == "cpu"
