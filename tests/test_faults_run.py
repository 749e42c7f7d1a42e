"""Issue 27, kinds 1, 2 and 11's folder: a run never replaces or mixes up a measurement in its output folder, and
no signal path leaves a case process running or a run without its results, report and resume advice. Real runs,
real signals, real processes."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.core import outdir
from tests.conftest import FAULTY_PLUGINS, harness_cli

MEASURE = """device: cpu
threads: 1
measure:
  repeat: 1
  min_pairs: 3
  min_samples: 3
  min_time_s: 0.02
  max_time_s: 0.3
  warmup_min_iters: 2
  warmup_min_s: 0.01
  warmup_max_s: 0.1
  timeout_s: {timeout}
"""

QUICK = "name: {name}\n" + MEASURE.replace("{timeout}", "60") + """workloads:
  toy:
    type: toy
    size: {size}
  small:
    type: toy
    size: 16
cases:
  - workload: toy
    plugins: [noop]
  - workload: small
    plugins: [noop]
"""

HANGING = "name: hanging\n" + MEASURE.replace("{timeout}", "300") + """workloads:
  toy:
    type: toy
    size: 32
cases:  # in this order the first round's seeded shuffle runs noop first, then the hang
  - workload: toy
    plugins: [{hang}]
  - workload: toy
    plugins: [noop]
"""

RANKS_PLUGIN = '''
import time

from harness import Optimization, hookimpl


class HangsInRanks(Optimization):
    """Hangs in each of two ranks (torchrun starts each in a session of its own)."""

    name, kind = "hangs_in_ranks", "inference"

    def processes(self):
        return 2

    def apply(self, run):
        time.sleep(3600)


@hookimpl
def register_optimizations(register):
    register(HangsInRanks)
'''


def _suite(tmp_path: Path, name: str = "quick-toy", size: int = 32, file: str = "suite.yaml") -> Path:
    path = tmp_path / file
    path.write_text(QUICK.format(name=name, size=size))
    return path


def _run(*args):
    return harness_cli("--plugins-dir", FAULTY_PLUGINS, "run", *args)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished run of the quick toy suite: (suite file, output folder); tests copy it, never change it."""
    root = tmp_path_factory.mktemp("finished")
    suite, out = _suite(root), root / "run"
    proc = _run(suite, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return suite, out


def _copy(finished, tmp_path: Path) -> tuple[Path, Path]:
    suite, out = finished
    shutil.copytree(out, tmp_path / "run")
    return suite, tmp_path / "run"


def test_a_folder_with_results_is_never_replaced(tmp_path, finished):
    suite, out = _copy(finished, tmp_path)
    before = (out / "results.json").read_bytes()
    again = _run(suite, "--out", out)
    assert again.returncode == 2
    assert f"{out / 'results.json'} holds an earlier run (suite 'quick-toy', 2 cases, complete" in again.stderr
    assert "--resume" in again.stderr and "Traceback" not in again.stderr
    assert (out / "results.json").read_bytes() == before


def test_two_runs_into_one_folder_at_once_the_second_is_refused(tmp_path):
    suite, out = tmp_path / "hang.yaml", tmp_path / "run"
    suite.write_text(HANGING.format(hang="hangs"))
    first = subprocess.Popen([sys.executable, "-m", "harness", "--plugins-dir", str(FAULTY_PLUGINS), "run",
                              str(suite), "--out", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: (out / "results.json").exists(), 60)
        second = _run(suite, "--out", out)
        assert second.returncode == 2
        assert f"{out} is in use by another harness run (pid {first.pid}, started " in second.stderr
        assert "Traceback" not in second.stderr
        resumed = _run(suite, "--out", out, "--resume")  # a resume waits its turn too
        assert resumed.returncode == 2 and "in use by another harness run" in resumed.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"


def test_default_folders_of_runs_started_in_one_second_differ(tmp_path):
    made = [outdir.default_out("quick", tmp_path) for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)
    assert made[1].name == made[0].name + "-2"


def test_resume_refuses_another_suites_folder_and_other_settings(tmp_path):
    suite, out = _suite(tmp_path), tmp_path / "run"
    assert _run(suite, "--out", out).returncode == 0
    before = (out / "results.json").read_bytes()
    other = _suite(tmp_path, name="other-suite", file="other.yaml")
    refused = _run(other, "--out", out, "--resume")
    assert refused.returncode == 2
    assert "holds a run of suite 'quick-toy'" in refused.stderr and "not of 'other-suite'" in refused.stderr
    suite.write_text(suite.read_text().replace("min_time_s: 0.02", "min_time_s: 0.05"))
    settings = _run(suite, "--out", out, "--resume")
    assert settings.returncode == 2 and "min_time_s 0.02 -> 0.05" in settings.stderr
    threads = _run(suite.with_name("suite.yaml"), "--out", out, "--resume", "--threads", "2")
    assert threads.returncode == 2
    assert (out / "results.json").read_bytes() == before


def test_resume_measures_again_a_case_whose_workload_changed(tmp_path):
    suite, out = _suite(tmp_path), tmp_path / "run"
    assert _run(suite, "--out", out).returncode == 0
    first = {c["id"]: c for c in json.loads((out / "results.json").read_text())["cases"]}
    nothing = _run(suite, "--out", out, "--resume")
    assert nothing.returncode == 0 and "resuming: 2 case processes already done" in nothing.stderr
    suite.write_text(QUICK.format(name="quick-toy", size=48))
    edited = _run(suite, "--out", out, "--resume")
    assert edited.returncode == 0, edited.stderr
    assert "toy/noop: its workload, plugins or their code changed since it was measured" in edited.stderr
    assert "resuming: 1 case processes already done" in edited.stderr
    final = {c["id"]: c for c in json.loads((out / "results.json").read_text())["cases"]}
    assert final["toy/noop"]["workload"]["spec"]["size"] == 48
    assert final["toy/noop"]["fingerprint"] != first["toy/noop"]["fingerprint"]
    assert final["small/noop"] == first["small/noop"]  # kept as measured


def _wait(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


def _start_hanging(tmp_path: Path, hang: str = "hangs", *flags: str, **popen):
    """A runner whose second case hangs, started and waited for until that case's processes run; returns the
    runner, its output folder and its descendant processes (the case's workers, the fork server)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "ranks.py").write_text(RANKS_PLUGIN)
    suite, out = tmp_path / "hang.yaml", tmp_path / "run"
    suite.write_text(HANGING.format(hang=hang))
    runner = subprocess.Popen([sys.executable, "-m", "harness", "--plugins-dir", str(FAULTY_PLUGINS),
                               "--plugins-dir", str(plugins), "run", str(suite), "--out", str(out), *flags],
                              stderr=subprocess.PIPE, text=True, **popen)
    log = f"toy_{hang}.p1.log"
    expected = (2 if hang == "hangs_in_ranks" else 1) + ("--fresh-processes" in flags)  # ranks, and the agent

    def hanging() -> bool:
        done = (out / "results.json").exists() and json.loads((out / "results.json").read_text())["cases"]
        return bool(done) and len(_holding(runner.pid, log)) >= expected
    _wait(hanging, 120)
    time.sleep(1.0)  # into apply()'s sleep
    return runner, out, psutil.Process(runner.pid).children(recursive=True)


def _holding(pid: int, log: str) -> list[psutil.Process]:
    """The descendants of `pid` that write to the case log `log` (a case's worker, ranks and torchrun agent)."""
    out = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if any(f.path.endswith(log) for f in proc.open_files()):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def _assert_all_gone(procs: list[psutil.Process], timeout: float = 20.0) -> None:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]


@pytest.mark.parametrize("hang,flags", [("hangs", ()), ("hangs_in_ranks", ()),
                                        ("hangs_in_ranks", ("--fresh-processes",))],
                         ids=["forked", "forked-ranks", "torchrun-ranks"])
def test_sigterm_keeps_results_report_and_advice_and_kills_every_case_process(tmp_path, hang, flags):
    runner, out, tree = _start_hanging(tmp_path, hang, *flags)
    assert tree
    runner.send_signal(signal.SIGTERM)
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 128 + signal.SIGTERM, err
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "interrupted" and [c["id"] for c in results["cases"]] == ["toy/noop"]
    assert (out / "report.html").exists()
    command = err.split("finish with: ")[1].splitlines()[0]
    assert shlex.split(command)[-3:] == ["--out", str(out), "--resume"]
    _assert_all_gone(tree)


def test_sigterm_to_the_runners_process_group_reaches_its_cases(tmp_path):
    runner, out, tree = _start_hanging(tmp_path, "hangs", start_new_session=True)
    os.killpg(runner.pid, signal.SIGTERM)  # what a CI timeout or a scheduler sends: the workers are in other groups
    _, err = runner.communicate(timeout=60)
    assert runner.returncode == 128 + signal.SIGTERM, err
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    _assert_all_gone(tree)


def test_a_case_process_does_not_outlive_a_killed_runner(tmp_path):
    runner, out, tree = _start_hanging(tmp_path, "hangs")
    workers = _holding(runner.pid, "toy_hangs.p1.log")
    assert workers
    runner.send_signal(signal.SIGKILL)  # no handler runs: the worker must notice by itself
    runner.communicate(timeout=30)
    _assert_all_gone(workers, timeout=10)
    assert "the runner (pid" in (out / "cases" / "toy_hangs.p1.log").read_text()


@pytest.mark.parametrize("gate", ["median:1e999", "speedup:nan%", "speedup:inf%"])
def test_a_gate_that_could_never_trip_is_refused(gate):
    from harness.core.errors import InputError
    from harness.report.compare import check_fail_if

    with pytest.raises(InputError, match="bad --fail-if expression"):
        check_fail_if({"rows": [], "effects": []}, [gate])


def test_a_report_or_export_never_overwrites_a_measurement(tmp_path, finished):
    suite, out = _copy(finished, tmp_path)
    results = out / "results.json"
    resorted = tmp_path / "sorted.json"  # what `jq -S` makes of it: schema_version near the end
    resorted.write_text(json.dumps(json.loads(results.read_text()), sort_keys=True, indent=1))
    bench = tmp_path / "bench.json"
    assert harness_cli("export", results, "--format", "pytest-benchmark", "-o", bench).returncode == 0
    kept = {f: f.read_bytes() for f in (results, resorted, bench, out / "cases" / "toy_noop.processes.json")}
    attempts = [["report", results, "-o", results], ["export", results, "--format", "csv", "-o", results],
                ["compare", results, results, "-o", results], ["report", resorted, "-o", resorted],
                ["compare", results, bench, "-o", bench],
                ["report", results, "-o", out / "cases" / "toy_noop.processes.json"]]
    for command in attempts:
        proc = harness_cli(*command)
        assert proc.returncode == 2 and "replace" in proc.stderr and "Traceback" not in proc.stderr, command
    assert all(f.read_bytes() == data for f, data in kept.items())


def test_an_output_through_a_link_or_onto_a_device_is_written_not_replaced(tmp_path, finished):
    suite, out = _copy(finished, tmp_path)
    target, link = tmp_path / "real.csv", tmp_path / "link.csv"
    target.write_text("old")
    link.symlink_to(target)
    assert harness_cli("export", out / "results.json", "--format", "csv", "-o", link).returncode == 0
    assert link.is_symlink() and target.read_text().startswith("case") or "toy/noop" in target.read_text()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    proc = harness_cli("export", out / "results.json", "--format", "markdown", "-o", fifo)
    assert proc.returncode == 0, proc.stderr
    assert "toy/noop" in reader.communicate(timeout=30)[0]
    assert not fifo.is_file() and fifo.exists()  # still the FIFO


SPAWNER = '''
import subprocess
import sys

from harness import Optimization, hookimpl


class SpawnsHelper(Optimization):
    """Starts a helper process in apply() and never ends it (bounded to 120 s)."""

    name, kind = "spawns_helper", "inference"

    def apply(self, run):
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
        with open(PIDS, "a") as f:
            f.write(f"{helper.pid}\\n")


@hookimpl
def register_optimizations(register):
    register(SpawnsHelper)
'''


def test_a_process_a_plugin_starts_does_not_outlive_its_case(tmp_path):
    plugins, pids = tmp_path / "plugins", tmp_path / "pids.txt"
    plugins.mkdir()
    (plugins / "spawner.py").write_text(SPAWNER.replace("PIDS", repr(str(pids))))
    suite, out = _suite(tmp_path), tmp_path / "run"
    suite.write_text(suite.read_text().split("cases:")[0] + "cases:\n  - workload: toy\n    plugins: [spawns_helper]\n")
    proc = harness_cli("--plugins-dir", FAULTY_PLUGINS, "--plugins-dir", plugins, "run", suite, "--out", out)
    assert proc.returncode in (0, 1), proc.stderr
    started = [int(x) for x in pids.read_text().split()]
    assert started  # in a session of its own: only the worker's own ending of its children reaches it
    alive = [p for p in started if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive
    assert "process(es) the case left running" in (out / "cases" / "toy_spawns_helper.p1.log").read_text()


def test_resolve_device_takes_the_suites_grammar():
    from harness.core.env import resolve_device

    with pytest.raises(ValueError, match="unknown device 'cuda:-1'"):
        resolve_device("cuda:-1", {"cuda": None})
