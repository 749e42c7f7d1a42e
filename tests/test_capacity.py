"""Capacity searches: the bracketing search on known thresholds (no timing), the suite's capacity block, and a real
search on the CPU whose answer agrees with the peaks its probes measured."""

from __future__ import annotations

import itertools
import json

import pytest

from harness.core import capacity
from harness.core.errors import InputError
from harness.core.plugins import load_registry
from harness.core.suite import load_suite
from tests.conftest import harness_cli


@pytest.mark.parametrize("threshold", [1, 2, 3, 5, 8, 13, 64, 100, 4095, 4096, 10**6])
@pytest.mark.parametrize("start, step", [(1, 1), (1, 2), (6, 2), (100, 1), (4, 4)])
def test_search_finds_the_largest_fitting_multiple_of_the_step(threshold, start, step):
    probed = []

    def fits(value: int) -> bool:
        probed.append(value)
        return value <= threshold

    found = capacity.search(fits, start, step, 4096, deadline=float("inf"))
    expected = min(threshold, 4096) // step * step or None
    assert found["largest"] == expected and found["complete"], (found, probed)
    assert all(v % step == 0 and step <= v <= 4096 for v in probed)
    assert len(probed) == len(set(probed)) <= 2 * 13 + 2  # doubling then bisection: O(log) probes
    if found["smallest_failing"] is not None:
        assert found["smallest_failing"] - (found["largest"] or 0) <= step


def test_nothing_fits_and_the_limit_are_complete_answers():
    assert capacity.search(lambda v: False, 1, 1, 64, float("inf")) == {
        "largest": None, "smallest_failing": 1, "complete": True, "stopped": "first value does not fit"}
    assert capacity.search(lambda v: True, 1, 1, 64, float("inf"))["stopped"] == "limit"


def test_search_stops_when_its_time_is_spent_and_says_what_it_established():
    ticks = itertools.count()
    found = capacity.search(lambda v: v <= 50, 1, 1, 4096, deadline=4, clock=lambda: next(ticks))
    assert found == {"largest": 8, "smallest_failing": None, "complete": False, "stopped": "time budget spent"}
    assert capacity.side_value(found) == "≥ 8"


def test_a_search_that_reaches_its_limit_reports_a_lower_bound_not_a_ratio_of_one():
    spec = capacity.CapacitySpec(dim="batch", budget_gb=1.0, limit=64)
    side = capacity.search(lambda v: True, 4, 1, 64, deadline=float("inf"))
    assert side["stopped"] == "limit" and side["largest"] == 64
    record = capacity.summarize(spec, {"baseline": side, "optimized": dict(side)})
    assert record["ratio"] is None  # both at the limit: nothing says which fits more
    assert capacity.headline(record) == ("capacity batch ≤ 1 GiB: ≥ 64 (the search's limit) → ≥ 64 (the search's "
                                         "limit) (ratio unknown: both are lower bounds; raise the search's limit)")
    bracketed = capacity.search(lambda v: v <= 10, 4, 1, 64, deadline=float("inf"))
    assert capacity.summarize(spec, {"baseline": bracketed, "optimized": side})["ratio_bound"] == "≥"


def test_an_out_of_memory_probe_does_not_fit_and_another_failure_ends_the_search():
    spec = capacity.CapacitySpec(dim="batch", budget_gb=1.0)

    def probe(value):
        return {"status": "ok", "fits": True, "peak_bytes": value, "step_s": 0.1,
                "units": {"tokens": value}} if value <= 5 else {"status": "oom", "error": "CUDA out of memory"}

    side = capacity.search_side(spec, probe, deadline=float("inf"))
    assert side["largest"] == 5 and side["smallest_failing"] == 6 and side["complete"]
    assert side["at_largest"]["value"] == 5 and [p["value"] for p in side["probes"]] == sorted(
        p["value"] for p in side["probes"])

    def broken(value):
        return {"status": "failed", "error": "ValueError: bad"} if value == 4 else \
            {"status": "ok", "fits": True, "units": {"tokens": 1}, "step_s": 1.0}

    side = capacity.search_side(spec, broken, deadline=float("inf"))
    assert side["largest"] == 2 and not side["complete"] and "probe at 4 failed: ValueError: bad" in side["stopped"]


def test_summary_ratio_is_a_bound_when_a_side_ran_out_of_time():
    spec = capacity.CapacitySpec(dim="batch", budget_gb=0.5)
    at = {"step_s": 1.0, "units": {"tokens": 100}}
    done = {"largest": 4, "smallest_failing": 5, "complete": True, "at_largest": at}
    partial = {"largest": 12, "smallest_failing": None, "complete": False,
               "at_largest": {"step_s": 2.0, "units": {"tokens": 300}}}
    record = capacity.summarize(spec, {"baseline": done, "optimized": partial})
    assert record["ratio"] == 3.0 and record["ratio_bound"] == "≥" and record["throughput_ratio"] == 1.5
    assert capacity.headline(record) == "capacity batch ≤ 0.5 GiB: 4 → ≥ 12 (≥3.00x), throughput there 1.50x"


SUITE = """\
name: cap
device: cpu
workloads:
  train: {{type: train, model: nano, batch: 8, seq_len: 64}}
cases:
  - workload: train
    plugins: {plugins}
    capacity: {capacity}
"""


def suite_with(tmp_path, plugins: str, capacity_block: str, **overrides):
    path = tmp_path / "cap.yaml"
    path.write_text(SUITE.format(plugins=plugins, capacity=capacity_block))
    return load_suite(path, load_registry(), **overrides)


@pytest.mark.parametrize("plugins, dim, step, limit", [
    ("[activation_checkpointing]", "batch", 1, 1 << 16),
    ("[{gradient_accumulation: {micro_batches: 4}}]", "batch", 4, 1 << 16),
    ("[{ddp: {world_size: 2}}]", "batch", 2, 1 << 16),
    ("[activation_checkpointing]", "seq_len", 1, 256),  # nano's context
])
def test_the_step_and_limit_are_what_both_sides_accept(tmp_path, plugins, dim, step, limit):
    case = suite_with(tmp_path, plugins, f"{{dim: {dim}, budget_gb: 1}}").cases[0]
    assert case.capacity["step"] == step and case.capacity["limit"] == limit


@pytest.mark.parametrize("block, field, message", [
    ("{dim: layers, budget_gb: 1}", "capacity.dim", "not an integer field of the workload; use one of batch"),
    ("{dim: batch, budget_gb: 0}", "capacity.budget_gb", "budget_gb must be > 0"),
    ("{dim: batch, budget: 1}", "capacity.budget", "did you mean 'budget_gb'"),
])
def test_a_bad_capacity_block_names_its_line_and_field(tmp_path, block, field, message):
    with pytest.raises(InputError, match=message) as err:
        suite_with(tmp_path, "[activation_checkpointing]", block)
    assert err.value.line == 8 and err.value.field.endswith(field)


def test_budget_and_model_overrides_apply_to_every_case_and_are_recorded(tmp_path):
    suite = suite_with(tmp_path, "[activation_checkpointing]", "{dim: batch, budget_gb: 1}", budget_gb=0.25,
                       model="cpu")
    assert suite.cases[0].capacity["budget_gb"] == 0.25 and suite.cases[0].workload_spec["model"] == "cpu"
    assert suite.overrides == {"model": "cpu", "budget_gb": 0.25}
    with pytest.raises(InputError, match="seq_len must be in 1..32"):
        (tmp_path / "hf").mkdir()
        (tmp_path / "hf" / "config.json").write_text('{"n_positions": 32, "vocab_size": 300}')
        suite_with(tmp_path, "[activation_checkpointing]", "{dim: batch, budget_gb: 1}",
                   model=f"hf:{tmp_path / 'hf'}")
    (tmp_path / "plain.yaml").write_text(SUITE.format(plugins="[activation_checkpointing]", capacity="null"))
    with pytest.raises(InputError, match="--budget-gb sets the budget of capacity: blocks and recipes"):
        load_suite(tmp_path / "plain.yaml", load_registry(), budget_gb=1.0)


CAPACITY_SUITE = """\
name: cap
device: cpu
measure: {{min_pairs: 5, block_s: 0.02, min_samples: 5, min_time_s: 0.1, max_time_s: 1, warmup_max_s: 0.2}}
workloads:
  train: {{type: train, model: nano, batch: 2, seq_len: 256, steps: 2}}
cases:
  - workload: train
    plugins: [activation_checkpointing]
    capacity: {{dim: batch, budget_gb: {budget_gb}, max_time_s: 400, start: 4}}
"""


def probe_peak(path, value: int, workdir) -> float:
    """The baseline's measured peak at batch `value`, by one capacity probe in a fresh process."""
    from harness.core import env as envmod
    from harness.core.runner import run_case

    suite = load_suite(path, load_registry())
    record = run_case(suite.cases[0], suite, envmod.detect("cpu", 2), 2, workdir, [],
                      probe={"search": "capacity", "side": "baseline", "value": value,
                             "budget_bytes": 2**30})
    assert record["status"] == "ok", record
    return record["probe"]["peak_bytes"]


@pytest.mark.slow
def test_a_cpu_capacity_search_agrees_with_the_peaks_it_measured(tmp_path):
    """Activation checkpointing on nano at seq_len 256: the largest batch per side within a budget the test sets
    2 MiB above the baseline's measured peak at batch 4 (a fixed budget would depend on the machine: a process's
    fixed RSS growth was 50 MB in one environment and 69 MB in another), each probe in a fresh process. The
    answer is bracketed by its own measurements: the probe at the largest value fits (peak <= budget), the one a
    step above does not; a side whose first value does not fit says so, its probe over the budget."""
    path = tmp_path / "cap.yaml"
    path.write_text(CAPACITY_SUITE.format(budget_gb=1))
    path.write_text(CAPACITY_SUITE.format(budget_gb=(probe_peak(path, 4, tmp_path) + 2**21) / 2**30))
    proc = harness_cli("run", path, "--out", tmp_path / "out", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "results.json").read_text())["cases"][0]["capacity"]
    budget = record["budget_bytes"]
    assert record["sides"]["baseline"]["stopped"] == "bracketed", record["sides"]["baseline"]
    for side in record["sides"].values():
        probes = {p["value"]: p for p in side["probes"]}
        assert side["complete"], side
        if side["stopped"] == "first value does not fit":  # checkpointing's own overhead on a tiny model
            assert not probes[1]["fits"] and probes[1]["peak_bytes"] > budget
            continue
        largest, failing = side["largest"], side["smallest_failing"]
        assert failing == largest + 1
        assert probes[largest]["fits"] and probes[largest]["peak_bytes"] <= budget
        assert not probes[failing]["fits"] and probes[failing]["peak_bytes"] > budget
        assert side["at_largest"]["step_s"] > 0 and side["at_largest"]["units"]["samples"] == largest
    # (no direction asserted: on nano the recompute's temporaries outweigh the few activations it drops)
    largest = [record["sides"][k]["largest"] for k in ("baseline", "optimized")]
    assert record["ratio"] == (largest[1] / largest[0] if all(largest) else None)
    assert "capacity batch" in proc.stderr
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Capacity: the largest value that fits the budget" in page and page.count("<svg") >= 4


def test_advice_commands_repeat_the_overrides():
    from harness.core.runner import run_command

    results = {"suite": {"path": "suites/laptop-finetune.yaml", "plugins_dirs": [],
                         "overrides": {"model": "hf:/models/my model", "budget_gb": 6.0}}}
    assert run_command(results, "--resume") == ("harness run suites/laptop-finetune.yaml --model "
                                                "'hf:/models/my model' --budget-gb 6.0 --resume")
