"""Issue 27, kind 3: a process a plugin's apply() leaves running while the other side is timed withholds the
verdict, naming plugin and process; an idle one (a sleeping helper, torch.compile's worker pool) does not."""

import json
import os
import signal
import textwrap

import pytest
import torch

from harness.core.plugins import load_registry
from harness.core.sides import THREAD_SHARE, Isolation
from harness.core.workload import RunContext
from tests.conftest import FAULTY_PLUGINS, harness_cli

TINY_MEASURE = ("measure: {min_pairs: 5, min_samples: 3, min_time_s: 0.02, max_time_s: 0.5, warmup_min_iters: 2,"
                " warmup_min_s: 0.01, warmup_max_s: 0.2, timeout_s: 120, repeat: 1}\n")

SPAWNS = """
import subprocess
import sys

from harness import Optimization, hookimpl

PIDS = {pids!r}
BUSY = "import time\\nprint('spinning', flush=True)\\nend = time.time() + 60\\nwhile time.time() < end:\\n    pass\\n"
IDLE = "import time\\nprint('ready', flush=True)\\ntime.sleep(60)\\n"


def spawn(code):
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    with open(PIDS, "a") as f:
        f.write(f"{{proc.pid}}\\n")
    return proc


class SpawnSpinner(Optimization):
    name, kind = "spawn_spinner", "inference"

    def apply(self, run):
        spawn(BUSY).stdout.readline()  # spinning before the timing starts: a slow interpreter start (a busy CI
        # box) would otherwise leave the baseline's short timing over before the child takes any CPU


class SpawnIdle(Optimization):
    name, kind = "spawn_idle", "inference"

    def apply(self, run):
        spawn(IDLE).stdout.readline()  # a helper that has started and waits for work


@hookimpl
def register_optimizations(register):
    register(SpawnSpinner)
    register(SpawnIdle)
"""


@pytest.fixture
def spawned(tmp_path):
    """The file the plugin writes its children's pids to; every one still running is killed at the end."""
    pids = tmp_path / "pids.txt"
    yield pids
    for pid in pids.read_text().split() if pids.exists() else []:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):  # already ended (the worker kills its leftovers)
            pass


def test_a_process_left_spinning_withholds_the_verdict_and_an_idle_one_does_not(tmp_path, spawned):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "spawns.py").write_text(textwrap.dedent(SPAWNS.format(pids=str(spawned))))
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: spawns\ndevice: cpu\nthreads: 1\n" + TINY_MEASURE
                     + "workloads:\n  t: {type: toy, size: 32}\n"
                       "cases:\n  - {workload: t, plugins: [spawn_spinner]}\n"
                       "  - {workload: t, plugins: [spawn_idle]}\n")
    out = tmp_path / "run"
    proc = harness_cli("--plugins-dir", plugins, "--plugins-dir", FAULTY_PLUGINS, "run", suite, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = {c["id"]: c for c in json.loads((out / "results.json").read_text())["cases"]}
    spin = cases["t/spawn_spinner"]
    started = [int(p) for p in spawned.read_text().split()]
    record = spin["measurement"]["side_effects"]["processes"]["optimized"]
    pid = record["processes"][0]["pid"]
    assert [p["pid"] for p in record["processes"]] == [pid] and pid in started, (started, record)
    reason = f"plugin spawn_spinner (optimized side) left process {pid} ('python"
    assert spin["comparison"]["verdict"] == "inconclusive" and spin["comparison"]["reason"].startswith(reason)
    assert "while the baseline's blocks were timed, so the baseline ran with it" in spin["comparison"]["reason"]
    assert any(w.startswith(reason) and "no faster/slower verdict" in w for w in spin["warnings"])
    assert record["during"] == "baseline"
    assert record["cpu_share"] >= THREAD_SHARE
    idle = cases["t/spawn_idle"]
    assert "left process" not in (idle["comparison"].get("reason") or "")
    assert not any("left process" in w for w in idle["warnings"])
    assert idle["measurement"]["side_effects"]["processes"]["optimized"]["cpu_share"] < THREAD_SHARE


def test_torch_compile_leaves_no_busy_process_while_the_baseline_is_timed():
    from harness.core.optimization import build_params

    registry = load_registry()
    wl = registry.workloads["train"]()
    spec = build_params(wl.Spec, {"model": "nano", "batch": 2, "seq_len": 16, "steps": 1})
    ctx = RunContext(device=torch.device("cpu"), env={"device": "cpu", "peak": None}, seed=0)
    compile_cls = registry.optimizations["torch_compile"]
    sides = {"baseline": [], "optimized": [compile_cls(build_params(compile_cls.Params, {}))]}
    isolation = Isolation(sides)
    runs = {}
    for name, opts in sides.items():
        isolation.begin(name)
        runs[name] = wl.build(spec, opts, ctx)
        isolation.applied(name)
        runs[name].outputs()  # torch.compile compiles here, and may start its worker pool
    isolation.timing()
    for _ in range(5):
        for name, run in runs.items():
            with isolation.block(name):
                run.timed_step()
    comparison, warnings = {"verdict": "faster", "reason": None}, []
    effects = isolation.judge(comparison, warnings)
    isolation.restore()
    assert comparison == {"verdict": "faster", "reason": None} and warnings == []
    assert effects["processes"].get("optimized", {"cpu_share": 0.0})["cpu_share"] < THREAD_SHARE
