"""The runner: each failure path is recorded with the right status while the other cases finish; an
interrupted run keeps what was measured and resumes without redoing finished cases."""

import dataclasses
import json
import random
import shlex
import signal
import subprocess
import sys
import time

from harness.core import stats
from tests.conftest import FAULTY_PLUGINS, FIXTURES, harness_cli


def test_faulty_plugins_are_recorded_and_the_suite_goes_on(tmp_path):
    out = tmp_path / "run"
    proc = harness_cli("--plugins-dir", FAULTY_PLUGINS, "run", FIXTURES / "faulty.yaml", "--out", out)
    assert proc.returncode == 1, proc.stderr  # some cases failed
    results = json.loads((out / "results.json").read_text())
    status = {c["id"]: c for c in results["cases"]}
    assert [c["id"] for c in results["cases"]] == ["toy/noop", "toy/raises", "toy/exits", "toy/hangs",
                                                   "toy/exhausts_memory", "toy/segfaults", "toy/wrong_scale"]
    assert status["toy/raises"]["status"] == "failed"
    assert "this plugin always raises" in status["toy/raises"]["error"]
    assert status["toy/exits"]["status"] == "crashed" and "exit 7" in status["toy/exits"]["error"]
    assert status["toy/hangs"]["status"] == "timeout" and "8 s timeout" in status["toy/hangs"]["error"]
    assert status["toy/exhausts_memory"]["status"] == "oom"
    assert status["toy/segfaults"]["status"] == "crashed" and "SIGSEGV" in status["toy/segfaults"]["error"]
    for failed in ("toy/raises", "toy/exits", "toy/hangs", "toy/exhausts_memory", "toy/segfaults"):
        assert "optimized" not in status[failed] and "baseline" not in status[failed]  # absent, not zero
    healthy = status["toy/noop"]
    assert healthy["status"] == "ok" and healthy["checks"][0]["passed"]
    assert healthy["optimized"]["latency"]["median"] > 0 and healthy["baseline"]["latency"]["rounds"] >= 5
    assert healthy["comparison"]["verdict"] in ("no significant difference", "faster", "slower", "inconclusive")
    assert (healthy["comparison"]["verdict"] == "inconclusive") == bool(healthy["comparison"]["reason"])
    broken = status["toy/wrong_scale"]
    assert broken["status"] == "ok" and not broken["checks"][0]["passed"]
    assert any("invariant failed" in w for w in broken["warnings"])
    assert results["status"] == "complete" and results["schema_version"] == 2


def test_interrupted_run_keeps_results_and_resumes(tmp_path):
    suite = tmp_path / "suite.yaml"
    text = (FIXTURES / "faulty.yaml").read_text()
    # listed hangs, noop, wrong_scale: the first round's seeded order runs noop, then hangs (round_order permutes
    # positions), so the run is interrupted during the hang with noop's first process kept
    suite.write_text(text.split("cases:")[0] + "cases:\n  - workload: toy\n    plugins: [hangs]\n"
                     "  - workload: toy\n    plugins: [noop]\n  - workload: toy\n    plugins: [wrong_scale]\n")
    out = tmp_path / "run"
    # SIGINT's default disposition in the runner, whatever this test process inherited (a shell's background job
    # ignores SIGINT, and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-m", "harness", "--plugins-dir", str(FAULTY_PLUGINS), "run",
                             str(suite), "--out", str(out)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    results_path = out / "results.json"
    while time.time() < deadline:  # wait until the first case is written and the hang has started
        if results_path.exists() and json.loads(results_path.read_text())["cases"]:
            break
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    kept = json.loads(results_path.read_text())
    assert kept["status"] == "interrupted" and [c["id"] for c in kept["cases"]] == ["toy/noop"], err
    command = err.split("finish with: ")[1].splitlines()[0]  # the printed advice, run as printed
    assert shlex.split(command) == ["harness", "--plugins-dir", str(FAULTY_PLUGINS), "run", str(suite), "--out",
                                    str(out), "--resume"]
    kept_processes = json.loads((out / "cases" / "toy_noop.processes.json").read_text())
    assert len(kept_processes) == 1

    suite.write_text(suite.read_text().replace("plugins: [hangs]", "plugins: [hangs]\n    timeout_s: 3"))
    resumed = harness_cli(*shlex.split(command)[1:])
    assert resumed.returncode == 1, resumed.stderr
    assert "resuming: 1 case processes already done" in resumed.stderr
    final = json.loads(results_path.read_text())
    assert [c["id"] for c in final["cases"]] == ["toy/hangs", "toy/noop", "toy/wrong_scale"]
    assert [c["status"] for c in final["cases"]] == ["timeout", "ok", "ok"]
    processes = json.loads((out / "cases" / "toy_noop.processes.json").read_text())
    assert processes[0] == kept_processes[0] and len(processes) == final["suite"]["repeat"]  # the first not redone
    assert final["cases"][1]["measurement"]["processes_repeated"] == final["suite"]["repeat"]
    assert final["status"] == "complete"


def test_inline_runs_in_process_and_refuses_multi_process_cases(tmp_path):
    suite = tmp_path / "suite.yaml"
    text = (FIXTURES / "faulty.yaml").read_text().split("cases:")[0]
    suite.write_text(text + "cases:\n  - workload: toy\n    plugins: [noop]\n")
    out = tmp_path / "run"
    proc = harness_cli("--plugins-dir", FAULTY_PLUGINS, "run", suite, "--out", out, "--inline")
    assert proc.returncode == 0, proc.stderr
    (case,) = json.loads((out / "results.json").read_text())["cases"]
    assert case["status"] == "ok" and case["log"] is None and case["checks"][0]["passed"]

    from harness.core.plugins import load_registry
    from harness.core.runner import run_case
    from harness.core.suite import load_suite

    ddp_suite = tmp_path / "ddp.yaml"
    ddp_suite.write_text("name: d\nworkloads:\n  t: {type: train, model: micro}\ncases:\n"
                         "  - workload: t\n    plugins: [ddp]\n")
    loaded = load_suite(ddp_suite, load_registry())
    record = run_case(loaded.cases[0], loaded, {"device": "cpu"}, 1, tmp_path, [], inline=True)
    assert record["status"] == "failed" and "without --inline" in record["error"]


def test_repeat_runs_processes_and_combines_their_pairs(tmp_path):
    suite = tmp_path / "suite.yaml"
    text = (FIXTURES / "faulty.yaml").read_text().split("cases:")[0]
    suite.write_text(text + "cases:\n  - workload: toy\n    plugins: [noop]\n")
    out = tmp_path / "run"
    proc = harness_cli("--plugins-dir", FAULTY_PLUGINS, "run", suite, "--out", out, "--repeat", "3")
    assert proc.returncode == 0, proc.stderr
    assert "round 3/3" in proc.stderr and "process 3:" in proc.stderr
    (case,) = json.loads((out / "results.json").read_text())["cases"]
    repeats = case["repeats"]
    assert len(repeats) == 3 and len({r["log"] for r in repeats}) == 3  # one log per process
    assert case["comparison"]["pairs"] == sum(r["pairs"] for r in repeats) == case["measurement"]["pairs"]
    assert case["comparison"]["process_pairs"] == [r["pairs"] for r in repeats]
    assert case["comparison"]["variance"]["processes"] == 3
    speeds = [r["speedup"] for r in repeats]
    assert min(speeds) <= case["comparison"]["speedup"] <= max(speeds)
    for side in ("baseline", "optimized"):
        latency = case[side]["latency"]
        assert sum(latency["blocks"]) == len(latency["data"]) and len(latency["blocks"]) == case["measurement"]["pairs"]
        assert sum(latency["process_blocks"]) == len(latency["blocks"]) and len(latency["process_blocks"]) == 3
    processes = json.loads((out / "cases" / "toy_noop.processes.json").read_text())
    assert [p["measurement"]["timing_only"] for p in processes] == [False, True, True]  # checks, memory: the first
    single = harness_cli("--plugins-dir", FAULTY_PLUGINS, "run", suite, "--out", tmp_path / "one", "--repeat", "1")
    (one,) = json.loads((tmp_path / "one" / "results.json").read_text())["cases"]
    assert any("covers the noise within that process only" in w for w in one["warnings"]), single.stderr
    bad = harness_cli("--plugins-dir", FAULTY_PLUGINS, "run", suite, "--out", tmp_path / "bad", "--repeat", "0")
    assert bad.returncode == 2 and "argument --repeat: must be a positive integer (got '0')" in bad.stderr


def test_rounds_interleave_the_cases_in_a_seeded_order(tmp_path, monkeypatch):
    """Round k runs the k-th process of every case before any case's next one; each round's order is shuffled
    from a fixed seed, the same on a rerun."""
    from harness.core import runner
    from harness.core.plugins import load_registry
    from harness.core.suite import load_suite

    suite = tmp_path / "suite.yaml"
    text = (FIXTURES / "faulty.yaml").read_text().split("cases:")[0]
    suite.write_text(text + "cases:\n  - workload: toy\n    plugins: [noop]\n")
    loaded = load_suite(suite, load_registry([str(FAULTY_PLUGINS)]))
    cases = [loaded.cases[0]] + [dataclasses.replace(loaded.cases[0], id=f"toy/{i}") for i in range(1, 5)]
    loaded.cases = cases
    calls = []

    def fake_run_case(case, suite, env, threads, workdir, plugins_dirs, inline=False, probe=None, process=0,
                      fresh=False, warmup_settled=None):
        calls.append((case.id, process))
        rng = random.Random(len(calls))
        blocks = [[1.0 + rng.random() * 0.01] for _ in range(3)]
        side = {"latency": stats.summarize([b[0] for b in blocks], 1, [1, 1, 1]), "throughput": {"x_per_s": 1.0}}
        return {**runner.case_record(case), "status": "ok", "checks": [], "warnings": [], "duration_s": 0.1,
                "baseline": side, "optimized": side, "measurement": {"pairs": 3, "warmup_settled": {"baseline": 1}},
                "comparison": stats.compare(blocks, blocks)}

    monkeypatch.setattr(runner, "run_case", fake_run_case)
    results = runner.run_suite(loaded, {"device": "cpu"}, tmp_path / "out", threads=1, plugins_dirs=[], repeat=3,
                               progress=lambda line: None)
    assert [c["measurement"]["processes_repeated"] for c in results["cases"]] == [3] * 5
    rounds = [[cid for cid, k in calls if k == r] for r in range(3)]
    assert calls == [(cid, r) for r in range(3) for cid in rounds[r]]  # interleaved: whole rounds in turn
    assert all(sorted(r) == sorted(c.id for c in cases) for r in rounds)
    assert rounds[0] != rounds[1] or rounds[1] != rounds[2]  # shuffled per round
    assert [runner.round_order([c.id for c in cases], r) for r in range(3)] == rounds  # seeded: a rerun agrees


def test_a_worker_that_hangs_after_writing_its_result_is_killed_and_the_result_kept(tmp_path, monkeypatch):
    from harness.core import launch, runner
    from harness.core.plugins import load_registry
    from harness.core.suite import load_suite

    monkeypatch.setattr(launch, "EXIT_GRACE_S", 1.0)
    suite = tmp_path / "suite.yaml"
    text = (FIXTURES / "faulty.yaml").read_text().split("cases:")[0]
    suite.write_text(text + "cases:\n  - workload: toy\n    plugins: [hangs_at_exit]\n")
    loaded = load_suite(suite, load_registry([str(FAULTY_PLUGINS)]))
    start = time.monotonic()
    record = runner.run_case(loaded.cases[0], loaded, {"device": "cpu"}, 1, tmp_path, [str(FAULTY_PLUGINS)])
    assert time.monotonic() - start < 40  # not the 60 s case timeout
    assert record["status"] == "ok" and record["checks"][0]["passed"]
    assert any("had not exited" in w for w in record["warnings"])


def test_a_case_run_inline_leaves_the_runners_own_processes_and_limits_alone(tmp_path):
    """--inline runs the case in the runner's process: what only a case process does (ending the processes it
    started, its memory limit) must not touch the runner's (its forkserver, say, which the next case needs)."""
    import resource

    from harness.core import runner
    from harness.core.plugins import load_registry
    from harness.core.suite import load_suite

    suite = tmp_path / "suite.yaml"
    text = (FIXTURES / "faulty.yaml").read_text().split("cases:")[0]
    suite.write_text(text + "cases:\n  - workload: toy\n    plugins: [noop]\n")
    loaded = load_suite(suite, load_registry([str(FAULTY_PLUGINS)]))
    own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    limit = resource.getrlimit(resource.RLIMIT_AS)
    try:
        record = runner.run_case(loaded.cases[0], loaded, {"device": "cpu"}, 1, tmp_path, [str(FAULTY_PLUGINS)],
                                 inline=True)
        assert record["status"] == "ok"
        assert own.poll() is None  # still running
        assert resource.getrlimit(resource.RLIMIT_AS) == limit  # not the suite's memory_limit_gb
        forked = runner.run_case(loaded.cases[0], loaded, {"device": "cpu"}, 1, tmp_path,
                                 [str(FAULTY_PLUGINS)])
        assert forked["status"] == "ok"
    finally:
        own.kill()
        own.wait()


def test_results_files_are_strict_json_and_say_which_value_was_not_finite(tmp_path):
    """Issue 11 (4): a diverging run's NaN is written as null with a warning, never as a bare NaN."""
    from harness.core.results import write_json

    path = tmp_path / "result.json"
    write_json(str(path), {"status": "ok", "warnings": [], "metrics": {"extra": {"loss": float("nan")},
                                                                      "data": [1.0, float("inf")]}})

    def refuse(token):
        raise ValueError(f"non-standard JSON constant {token}")

    doc = json.loads(path.read_text(), parse_constant=refuse)
    assert doc["metrics"]["extra"]["loss"] is None and doc["metrics"]["data"] == [1.0, None]
    assert doc["warnings"] == ["not finite, written as null: metrics.extra.loss, metrics.data[1]"]


def test_sides_doing_different_work_get_no_time_verdict():
    from harness.core.worker import different_work

    assert different_work({"tokens": 64, "sequences": 4}, {"tokens": 64, "sequences": 4}) is None
    reason = different_work({"tokens": 64, "sequences": 4}, {"tokens": 310, "requests": 12})
    assert "different work per step" in reason and "'requests': 12" in reason
