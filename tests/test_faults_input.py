"""Untrusted input (issue 27, kinds 4 and 10): suites, prices files, lengths files and command-line values are
refused with file:line (or the option) and exit 2, in bounded time and memory, never a traceback or a silent
default; measure settings in the wrong unit say the unit."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest

from harness.core.cost import load_prices
from harness.core.errors import InputError
from harness.core.suite import load_suite
from harness.workloads.serve.trace import read_lengths
from tests.conftest import FAULTY_PLUGINS, harness_cli

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
# 9 levels of 9 aliases each: 9^9 (387 million) strings from about 600 bytes
BOMB = "lol: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))


def write(tmp_path, text, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_for(tmp_path, registry, text, **overrides) -> InputError:
    with pytest.raises(InputError) as info:
        load_suite(write(tmp_path, text), registry, overrides=overrides)
    return info.value


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))  # 1.5 GiB of address space


def test_a_yaml_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path):
    suite = write(tmp_path, GOOD + BOMB)
    proc = subprocess.run([sys.executable, "-m", "harness", "--plugins-dir", str(FAULTY_PLUGINS), "validate",
                           str(suite)], capture_output=True, text=True, timeout=120, preexec_fn=_limit_memory)
    assert proc.returncode == 2, proc.stderr
    assert f"error: {suite}:17: expands to more than 100,000 values" in proc.stderr and "alias bomb" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("text, line, words", [
    (GOOD + "description: &d [a, *d]\n", 12, "alias *d is inside the node it names (a recursive alias)"),
    (GOOD.replace("    size: 8", "    size: " + "[" * 5000 + "]" * 5000), 8, "nested more than 64 levels deep"),
    (GOOD + "name: t\n", 12, "key 'name' is given twice in one mapping (lines 1 and 12)"),
    (GOOD.replace("    size: 8", "    size: 8\n    size: 9"), 9, "key 'size' is given twice"),
    (GOOD.replace("device: cpu", "device: cpu\x07"), 2, "malformed YAML: special characters are not allowed"),
])
def test_yaml_structure_the_loader_refuses_names_its_line(tmp_path, registry, text, line, words):
    err = error_for(tmp_path, registry, text)
    assert err.path.endswith("suite.yaml") and err.line == line and words in err.message


def test_a_huge_or_binary_suite_file_is_refused(tmp_path, registry):
    big = tmp_path / "big.yaml"
    big.write_text(GOOD + "description: " + "x" * (1 << 20) + "\n")
    with pytest.raises(InputError, match="over 1 MiB"):
        load_suite(big, registry)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(GOOD.encode() + b"note: \xff\xfe\n")
    with pytest.raises(InputError, match="not UTF-8 text") as info:
        load_suite(binary, registry)
    assert info.value.line == 12


def test_duplicate_case_ids_point_at_the_second_case(tmp_path, registry):
    err = error_for(tmp_path, registry, GOOD + "  - workload: toy\n    plugins: [noop]\n")
    assert (err.line, err.field) == (12, "cases[1]")
    assert "two cases have the same id 'toy/noop' (lines 10 and 12)" in err.message


def test_duplicate_case_ids_from_one_sweep_point_at_the_sweep(tmp_path, registry):
    err = error_for(tmp_path, registry, GOOD + "    sweep: {workload.size: [4, 4]}\n")
    assert (err.line, err.field) == (12, "cases[0].sweep") and "the same id 'toy(size=4)/noop'" in err.message


def test_a_sweep_past_the_case_limit_is_refused_before_expanding(tmp_path, registry):
    sizes = ", ".join(str(i) for i in range(1, 10_002))
    err = error_for(tmp_path, registry, GOOD + f"    sweep: {{workload.size: [{sizes}]}}\n")
    assert (err.line, err.field) == (12, "cases[0].sweep") and "makes 10,001 cases" in err.message


@pytest.mark.parametrize("setting, words", [
    ("min_time_s: .nan", "must be a finite number (got nan)"),
    ("max_time_s: .inf", "must be a finite number (got inf)"),
    ("timeout_s: -.inf", "must be a finite number (got -inf)"),
    ("warmup_max_s: 0", "must be positive (got 0.0)"),
    ("block_s: -0.1", "must be positive"),
    ("repeat: 0", "must be at least 1"),
    ("min_pairs: -3", "must be at least 1"),
    ("max_samples: 1", "at least 2 samples"),
    ("memory_limit_gb: 0", "must be positive"),
    ("min_effect: 5", "min_effect is a fraction: 0.05 means 5 %"),
    ("min_effect: -0.5", "min_effect is a fraction: 0.05 means 5 %"),
    ("min_effect: 0", "give a value in (0, 1]"),
    ("min_effect: .nan", "must be a finite number"),
    ("min_effect: 'five'", "must be float"),
    ("busy_threshold: 10", "busy_threshold is a fraction of the machine: 0.1 means 10 %"),
    ("repeat: 2.5", "must be int"),
])
def test_a_bad_measure_setting_is_refused_at_validate_with_its_line(tmp_path, registry, setting, words):
    err = error_for(tmp_path, registry, GOOD.replace("  min_pairs: 6", "  " + setting))
    assert err.line == 4 and err.field == f"measure.{setting.split(':')[0]}" and words in err.message


def test_min_effect_and_busy_threshold_also_take_a_percent(tmp_path, registry):
    suite = load_suite(write(tmp_path, GOOD.replace("  min_pairs: 6", "  min_effect: 5%\n  busy_threshold: '20 %'")),
                       registry)
    assert suite.measure.min_effect == pytest.approx(0.05) and suite.measure.busy_threshold == pytest.approx(0.2)


@pytest.mark.parametrize("old, new, line, field, words", [
    ("device: cpu", "device: tpu", 2, "device", "unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
    ("device: cpu", "device: cuda:-1", 2, "device", "unknown device 'cuda:-1'"),
    ("device: cpu", "device: 0", 2, "device", "unknown device 0"),
    ("    plugins: [noop]", "    plugins: [noop]\n    timeout_s: .inf", 13, "cases[0].timeout_s", "finite number"),
    ("    plugins: [noop]", "    plugins: [noop]\n    timeout_s: true", 13, "cases[0].timeout_s", "positive number"),
    ("    size: 8", "    size: 8\n  g: {type: generate, temperature: .nan}", 10, "workloads.g.temperature",
     "must be a finite number (got nan)"),
    ("threads: 4", "threads: 0", 3, "threads", "positive integer"),
])
def test_bad_suite_values_name_line_and_field(tmp_path, registry, old, new, line, field, words):
    err = error_for(tmp_path, registry, GOOD.replace("device: cpu", "device: cpu\nthreads: 4").replace(old, new))
    assert (err.line, err.field) == (line, field) and words in err.message


@pytest.mark.parametrize("overrides, option", [
    ({"threads": 0}, "--threads"), ({"threads": -1}, "--threads"), ({"repeat": 0}, "--repeat"),
    ({"device": "tpu"}, "--device"), ({"budget_gb": float("nan")}, "--budget-gb"),
])
def test_overrides_passed_to_load_suite_are_checked(tmp_path, registry, overrides, option):
    assert error_for(tmp_path, registry, GOOD, **overrides).field == option


@pytest.mark.parametrize("args, option", [
    (["run", "--threads", "-1"], "--threads"), (["run", "--threads", "0"], "--threads"),
    (["run", "--threads=x"], "--threads"), (["run", "--repeat", "0"], "--repeat"),
    (["run", "--device", "tpu"], "--device"), (["validate", "S", "--budget-gb", "nan"], "--budget-gb"),
    (["run", "--budget-gb", "-2"], "--budget-gb"), (["run", "--price-per-hour", "inf"], "--price-per-hour"),
    (["report", "r.json", "--price-per-hour", "0"], "--price-per-hour"), (["env", "--device", "cuda:x"], "--device"),
])
def test_bad_command_line_values_exit_2_naming_the_option(tmp_path, args, option):
    proc = harness_cli(*[str(tmp_path / "s.yaml") if a == "S" else a for a in args], cwd=tmp_path)
    assert proc.returncode == 2 and f"argument {option}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "reports").exists()


def test_a_bad_device_from_the_suite_fails_validate_on_the_command_line(tmp_path):
    suite = write(tmp_path, GOOD.replace("device: cpu", "device: tpu"))
    proc = harness_cli("--plugins-dir", FAULTY_PLUGINS, "validate", suite)
    assert proc.returncode == 2 and f"error: {suite}:2: device: unknown device 'tpu'" in proc.stderr


@pytest.mark.parametrize("row, field, words", [
    ('{"prompt_len": 3.5, "output_len": 4}', "prompt_len", "needs a whole number of tokens"),
    ('{"prompt_len": true, "output_len": 4}', "prompt_len", "needs a whole number of tokens"),
    ('{"prompt_len": NaN, "output_len": 4}', "prompt_len", "needs a whole number of tokens"),
    ('{"prompt_len": 8, "output_len": Infinity}', "output_len", "needs a whole number of tokens"),
    ('{"prompt_len": 8, "output_len": 1e300}', "output_len", "must be in 1..1,048,576 tokens"),
    ('{"prompt_len": -3, "output_len": 4}', "prompt_len", "must be in 1.."),
    ('{"prompt_len": "x", "output_len": 4}', "prompt_len", "needs a whole number of tokens 'prompt_len' (got 'x')"),
    ('{"output_len": 4}', "prompt_len", "has no 'prompt_len' (key"),
    ("[8, 4]", None, "not a JSON object (got list)"),
    ("[" * 100_000 + "]" * 100_000, None, "not a JSON object"),
    ('{"prompt_len": 8, "output_len": ' + "9" * 5000 + "}", None, "not a JSON object"),
])
def test_a_bad_lengths_row_names_file_line_and_field(tmp_path, row, field, words):
    path = tmp_path / "lengths.jsonl"
    path.write_text('{"prompt_len": 8, "output_len": 4}\n\n' + row + "\n")
    with pytest.raises(InputError) as info:
        read_lengths(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 3, field)
    assert words in info.value.message


def test_lengths_files_read_whole_numbers_and_refuse_what_they_cannot_use(tmp_path):
    good = tmp_path / "ok.jsonl"
    good.write_text('{"prompt_len": 8.0, "output_len": "4"}\n')
    assert read_lengths(good) == [(8, 4)]
    wide = tmp_path / "wide.csv"
    wide.write_text("prompt_len,output_len\n8,4\n8,\"" + "4" * 200_000 + "\"\n")
    with pytest.raises(InputError, match="not a CSV row: field larger than field limit") as info:
        read_lengths(wide)
    assert info.value.line == 3
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as f:
        f.truncate((64 << 20) + 1)  # sparse: no disk used
    with pytest.raises(InputError, match="over 64 MiB"):
        read_lengths(huge)


@pytest.mark.parametrize("text, line, words", [
    ("H100: .nan\n", 1, "price must be a positive number"),
    ("H100: 2.5\nA100: .inf\n", 2, "price must be a positive number"),
    ("H100: -1\n", 1, "price must be a positive number"),
    ("H100: true\n", 1, "price must be a positive number"),
    ("H100: 2\nH100: 3\n", 2, "key 'H100' is given twice"),
    (BOMB, 6, "expands to more than 100,000 values"),
    ("[2.5]\n", 1, "expected a mapping of device name to USD per hour"),
])
def test_a_bad_prices_file_names_its_line(tmp_path, text, line, words):
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_prices(path)
    assert (info.value.path, info.value.line) == (str(path), line) and words in info.value.message


def test_a_good_prices_file_still_loads(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("H100: 2.5\ncpu: 1\n")
    assert load_prices(path) == {"H100": 2.5, "cpu": 1.0}


@pytest.mark.parametrize("config", ["[1, 2]", '{"vocab_size": "many", "n_positions": 64}', "[" * 100_000])
def test_a_broken_config_json_of_an_hf_model_fails_validate(tmp_path, registry, config):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(config)
    text = GOOD.replace("    size: 8", f"    size: 8\n  t: {{type: train, model: 'hf:{tmp_path / 'm'}'}}")
    err = error_for(tmp_path, registry, text)
    assert (err.line, err.field) == (9, "workloads.t.model") and "is not a readable config.json" in err.message


@pytest.mark.parametrize("old, new, line, field, words", [
    ("name: s", "name:", 1, "name", "must be a non-empty string (got null)"),
    ("name: s", "name: [a, b]", 1, "name", "must be a non-empty string (got a list ['a', 'b'])"),
    ("name: s", "name: 2024-01-01", 1, "name",
     "must be a non-empty string (got a date datetime.date(2024, 1, 1)); write it in quotes"),
    ("name: s", "name: 12", 1, "name", "must be a non-empty string (got a number 12); write it in quotes"),
    ("name: s", "name: !!binary aGVsbG8=", 1, "name", "must be a non-empty string (got binary data b'hello')"),
    ("name: s", "name: '  '", 1, "name", "must be a non-empty string"),
    ("name: s", "name: s\ndescription: yes", 2, "description", "must be a string (got a boolean True)"),
    ("  toy:\n", "  2024-01-01:\n", 6, "workloads.2024-01-01", "must be a non-empty string (got a date"),
    ("    plugins: [noop]", "    plugins: [noop]\n    note: 3.5", 12, "cases[0].note", "(got a number 3.5)"),
    ("  - workload: toy", "  - workload: [toy]", 10, "cases[0].workload", "must be a non-empty string (got a list"),
    ("device: cpu", "device: cuda:99999999999999999999", 2, "device",
     "device 'cuda:99999999999999999999': a CUDA device index is below 1,024"),
    ("device: cpu", "device: cpu\nthreads: 100000000", 3, "threads", "positive integer up to 4,096"),
    ("  min_pairs: 6", "  repeat: 99999999999999999999999999", 4, "measure.repeat",
     "must be at most 1,000 processes per case"),
    ("  min_pairs: 6", "  timeout_s: 1e400", 4, "measure.timeout_s",
     "write 1.0e+400 (YAML 1.1, which suites are read with, takes 1e400 as text: a number with an exponent needs "
     "a '.' and a signed exponent)"),
    ("  min_pairs: 6", "  min_time_s: 1e-3", 4, "measure.min_time_s", "write 1.0e-3 (YAML 1.1"),
    ("  min_pairs: 6", "  min_pairs: 1e3", 4, "measure.min_pairs", "write it in digits (YAML 1.1 takes 1e3 as text)"),
    ("    size: 8", "    size: 8\n  g: {type: generate, temperature: 5E-1}", 9, "workloads.g.temperature",
     "write 5.0e-1"),
    ("    plugins: [noop]", "    plugins: [noop]\n    timeout_s: 1e3", 12, "cases[0].timeout_s", "write 1.0e+3"),
])
def test_suite_values_of_a_kind_the_harness_cannot_use_are_refused(tmp_path, registry, old, new, line, field, words):
    assert old in GOOD
    err = error_for(tmp_path, registry, GOOD.replace(old, new))
    assert (err.line, err.field) == (line, field) and words in err.message, (err.line, err.field, err.message)


def test_a_quoted_number_or_date_is_a_name_and_a_blank_description_is_empty(tmp_path, registry):
    suite = load_suite(write(tmp_path, GOOD.replace("name: s", "name: '2024-01-01'\ndescription:")), registry)
    assert (suite.name, suite.description) == ("2024-01-01", "")


@pytest.mark.parametrize("overrides, words", [
    ({"threads": 4097}, "up to 4,096"), ({"repeat": 1001}, "up to 1,000"), ({"device": "cuda:1024"}, "below 1,024"),
])
def test_overrides_past_their_bound_are_refused(tmp_path, registry, overrides, words):
    err = error_for(tmp_path, registry, GOOD, **overrides)
    assert err.field == f"--{next(iter(overrides))}" and words in err.message


@pytest.mark.parametrize("args, words", [
    (["run", "--threads", "100000000"], "argument --threads: must be at most 4,096 (got '100000000')"),
    (["run", "--repeat", "9" * 30], "argument --repeat: must be at most 1,000 (got '9999999999999999999999999999"
                                    "99')"),
    (["run", "--repeat", "9" * 5000], "argument --repeat: must be a positive integer (got '" + "9" * 37 + "...')"),
    (["run", "--device", "cuda:99999999999999999999"], "a CUDA device index is below 1,024"),
])
def test_command_line_values_past_their_bound_exit_2(tmp_path, args, words):
    proc = harness_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "reports").exists()
