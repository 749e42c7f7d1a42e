"""Every command or suite field the harness prints as advice works: each one is run (or loaded) here."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from harness.core import load, stats
from harness.core.cli import print_summary
from harness.core.plugins import load_registry
from harness.core.suite import load_suite
from harness.report.page import render_report
from tests.conftest import harness_cli

DATA = Path(__file__).parent / "data"
SUITE = """\
name: advice
device: cpu
threads: 1
measure: {min_pairs: 5, min_samples: 3, min_time_s: 0.05, max_time_s: 0.5, warmup_min_s: 0.02, warmup_max_s: 0.2}
workloads:
  gen: {type: generate, model: micro, batch: 1, prompt_len: 8, new_tokens: 4, prompts: synthetic}
cases:
  - workload: gen
    plugins: [{kv_cache: {kind: static}}]
  - workload: gen
    plugins: [{quantization: {method: int8_dynamic}}]
"""


def withheld_results(suite: Path) -> dict:
    """A results file whose kv_cache case was withheld on a busy machine and quantization case for a wide
    interval."""
    results = json.loads((DATA / "results-cpu.json").read_text())
    results["suite"].update(path=str(suite), plugins_dirs=[])
    ok = [c for c in results["cases"] if c["status"] == "ok"][:2]
    for case, plugin, busy in zip(ok, ("kv_cache", "quantization"), (True, False)):
        case["plugins"] = [{"name": plugin, "params": {}}]
        case["comparison"].update(verdict="inconclusive", reason="busy" if busy else "interval too wide")
        case.setdefault("measurement", {})["foreign_load"] = {"busy": busy, "foreign_cpu": 0.4 if busy else 0.0}
    results["cases"] = ok
    return results


def test_withheld_verdict_commands_run(tmp_path, capsys):
    suite = tmp_path / "advice.yaml"
    suite.write_text(SUITE)
    print_summary(withheld_results(suite))
    commands = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("harness ")]
    assert len(commands) == 3  # busy: run again; too wide: --until-conclusive, --repeat 5 (one process before)
    ran = {}
    for i, command in enumerate(commands):
        argv = shlex.split(command)[1:] + ["--out", str(tmp_path / f"run{i}")]
        proc = harness_cli(*argv, cwd=tmp_path)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        results = json.loads((tmp_path / f"run{i}" / "results.json").read_text())
        ran[command] = [c["id"] for c in results["cases"]]
    assert ran[commands[0]] == ["gen/kv_cache(kind=static)"]  # --only the busy case's plugin
    assert ran[commands[1]] == ran[commands[2]] == ["gen/quantization"]
    assert "--until-conclusive" in commands[1] and "--repeat 5" in commands[2]


def test_cost_advice_command_runs(tmp_path):
    results = json.loads((DATA / "results-cpu.json").read_text())  # a CPU: no example price
    (tmp_path / "results.json").write_text(json.dumps(results))
    html = render_report(results)
    assert "no price is known" in html
    command = re.search(r"<code>(harness report [^<]*)</code>", html).group(1)
    proc = harness_cli(*shlex.split(command)[1:], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "report.html").read_text()
    assert "no price is known" not in report and "given by the user" in report


def test_suite_fields_given_as_advice_load(tmp_path):
    """`measure: {...}` and `threads: N` snippets in warnings and advice are valid suite YAML."""
    slow_starts = [1.0, 0.5, 0.5, 0.5] * 6  # every block's first sample slow: a side-switch cost
    advice = stats.warnings_for("optimized", slow_starts, [4] * 6)
    advice += stats.warnings_for("optimized", [9.0] + [1.0, 1.0, 1.0] + [2.0, 1.0, 1.0] * 5, [3] * 6)
    busy = load.summarize([{"foreign_cpu": 0.6, "steal": 0.0}], [1.0], 2, 2, None, 0.1)
    advice.append(busy["advice"])
    snippets = [s for text in advice for s in re.findall(r"`((?:measure|threads):[^`]*)`", text)]
    assert {s.split(":")[0] for s in snippets} == {"measure", "threads"}, advice
    registry = load_registry([])
    for snippet in snippets:
        data = yaml.safe_load(SUITE)
        for key, value in yaml.safe_load(snippet).items():
            data[key] = {**data[key], **value} if isinstance(value, dict) else value
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(data))
        load_suite(path, registry)  # raises InputError if the advised field is not accepted
