"""Bad suites give a clear error with file, line and field, exit code 2, and write nothing."""

import textwrap

import pytest

from harness.core.errors import InputError
from harness.core.suite import load_suite
from tests.conftest import FAULTY_PLUGINS, FIXTURES, harness_cli

GOOD = """\
name: s
device: cpu
measure:
  min_pairs: 6
workloads:
  toy:
    type: toy
    size: 8
cases:
  - workload: toy
    plugins: [noop]
"""


def write(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_for(tmp_path, registry, text) -> InputError:
    with pytest.raises(InputError) as info:
        load_suite(write(tmp_path, text), registry)
    return info.value


def test_good_suite_loads(tmp_path, registry):
    suite = load_suite(write(tmp_path, GOOD), registry)
    assert [c.id for c in suite.cases] == ["toy/noop"]
    assert suite.measure.min_pairs == 6 and suite.device == "cpu"


def test_malformed_yaml_names_the_line(tmp_path, registry):
    err = error_for(tmp_path, registry, GOOD.replace("    size: 8", "    size: [8"))
    assert err.path.endswith("suite.yaml") and err.line is not None and "malformed YAML" in err.message


def test_unknown_key_suggests_the_nearest(tmp_path, registry):
    err = error_for(tmp_path, registry, GOOD.replace("  min_pairs: 6", "  min_pair: 6"))
    assert err.line == 4 and err.field == "measure.min_pair" and "did you mean 'min_pairs'" in err.message


def test_the_old_rounds_setting_says_what_replaced_it(tmp_path, registry):
    err = error_for(tmp_path, registry, GOOD.replace("  min_pairs: 6", "  rounds: 3"))
    assert err.line == 4 and err.field == "measure.rounds" and "min_pairs" in err.message
    err = error_for(tmp_path, registry, GOOD.replace("  min_pairs: 6", "  busy_threshold: 0"))
    assert err.field == "measure.busy_threshold" and "(0, 1]" in err.message


def test_baseline_none_times_the_plugins_alone(tmp_path, registry):
    suite = load_suite(write(tmp_path, GOOD.replace("    plugins: [noop]", "    plugins: [noop]\n    baseline: none")),
                       registry)
    (case,) = suite.cases
    assert case.alone and case.baseline == [] and case.id == "toy/noop alone"


def test_wrong_type_and_range(tmp_path, registry):
    err = error_for(tmp_path, registry, GOOD.replace("    size: 8", "    size: big"))
    assert err.line == 8 and err.field == "workloads.toy.size" and "must be int" in err.message
    err = error_for(tmp_path, registry, GOOD.replace("  min_pairs: 6", "  min_pairs: 0"))
    assert err.line == 4 and "at least 1" in err.message


def test_unknown_plugin_and_workload(tmp_path, registry):
    err = error_for(tmp_path, registry, GOOD.replace("[noop]", "[nop]"))
    assert err.line == 11 and "unknown plugin 'nop'" in err.message and "did you mean 'noop'" in err.message
    err = error_for(tmp_path, registry, GOOD.replace("  - workload: toy", "  - workload: tooy"))
    assert err.line == 10 and "unknown workload 'tooy'" in err.message


def test_sweep_rejects_an_unknown_parameter(tmp_path, registry):
    text = GOOD + "    sweep: {noop.x: [1, 2]}\n"
    err = error_for(tmp_path, registry, text)
    assert "unknown parameter 'x'" in err.message


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path):
    bad = write(tmp_path, GOOD.replace("[noop]", "[nop]"))
    out = tmp_path / "out"
    proc = harness_cli("--plugins-dir", FAULTY_PLUGINS, "run", bad, "--out", out)
    assert proc.returncode == 2
    assert f"{bad}:11: cases[0].plugins[0]: unknown plugin 'nop'" in proc.stderr
    assert not out.exists()
    missing = harness_cli("validate", tmp_path / "missing.yaml")
    assert missing.returncode == 2 and "missing.yaml" in missing.stderr and "cannot read suite" in missing.stderr


def test_missing_device_is_bad_input(tmp_path):
    suite = write(tmp_path, GOOD.replace("device: cpu", "device: cuda:3"))
    proc = harness_cli("--plugins-dir", FAULTY_PLUGINS, "run", suite, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "cuda:3" in proc.stderr and "is not here" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_shipped_suites_validate():
    from harness.core.plugins import load_registry

    registry = load_registry()
    for path in sorted((FIXTURES.parent.parent / "suites").glob("*.yaml")):
        suite = load_suite(path, registry)
        assert suite.cases, path


def test_sweep_sets_the_parameter_on_both_sides(tmp_path):
    from harness.core.plugins import load_registry

    reg = load_registry()
    sweep = """\
name: s
workloads:
  g: {type: generate, model: nano, batch: 4, prompt_len: 8, new_tokens: 4}
cases:
  - workload: g
    plugins: [batching]
    baseline: [{batching: {mode: sequential}}]
    sweep: {batching.batch_size: [1, 4]}
"""
    cases = load_suite(write(tmp_path, sweep), reg).cases
    assert [c.plugins[0].params["batch_size"] for c in cases] == [1, 4]
    assert [c.baseline[0].params["batch_size"] for c in cases] == [1, 4]
    assert all(c.baseline[0].params["mode"] == "sequential" for c in cases)
    assert len({c.id for c in cases}) == 2


def test_sweep_over_a_workload_field_makes_one_case_per_value(tmp_path):
    """`workload.FIELD` sweeps the workload's own settings (a trace's rate, a batch): each case gets the value in
    its spec and in its id; a bad value names the sweep's field and line."""
    from harness.core.plugins import load_registry

    reg = load_registry()
    sweep = """\
name: s
workloads:
  srv: {type: serve, model: nano, requests: 8, slots: 2}
cases:
  - workload: srv
    plugins: [continuous_batching]
    sweep: {workload.rate: [10, 40], workload.slots: [2]}
"""
    cases = load_suite(write(tmp_path, sweep), reg).cases
    assert [(c.workload_spec["rate"], c.workload_spec["slots"]) for c in cases] == [(10, 2), (40, 2)]
    assert [c.id for c in cases] == ["srv(rate=10,slots=2)/continuous_batching",
                                     "srv(rate=40,slots=2)/continuous_batching"]
    assert all(c.workload == "srv" and c.workload_spec["requests"] == 8 for c in cases)
    err = error_for(tmp_path, reg, sweep.replace("[10, 40]", "[10, -1]"))
    assert err.field == "cases[0].sweep.workload.rate" and "must be > 0" in err.message and err.line == 7
    err = error_for(tmp_path, reg, sweep.replace("workload.rate", "workload.speed"))
    assert "unknown parameter 'speed'" in err.message


def test_only_a_plugin_no_case_uses_is_bad_input(tmp_path):
    out, suite = tmp_path / "out", write(tmp_path, GOOD)
    proc = harness_cli("--plugins-dir", FAULTY_PLUGINS, "run", suite, "--only", "kv_cache", "--out", out)
    assert proc.returncode == 2 and "no case of suite 's' uses kv_cache; its cases use noop" in proc.stderr
    assert not out.exists()
