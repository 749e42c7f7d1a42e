"""The pytest plugin's `compare=True`: both sides in paired blocks, judged by the same rule as `harness run`."""

from harness.core.timing import MeasureSettings
from harness.pytest_plugin import run_case


class FakeBenchmark:
    """The parts of pytest-benchmark's fixture that run_case uses, with --benchmark-disable semantics."""

    def __init__(self):
        self.extra_info, self.group, self.stats = {}, None, None

    def pedantic(self, fn, rounds=1, warmup_rounds=0, iterations=1):
        fn()


FAST = MeasureSettings(min_pairs=6, min_samples=6, min_time_s=0.05, max_time_s=5.0, warmup_min_s=0.02,
                       warmup_max_s=0.3, block_s=0.02)


def test_identical_sides_are_never_called_faster_or_slower():
    spec = {"model": "micro", "batch": 2, "seq_len": 16, "steps": 1}
    info = run_case(FakeBenchmark(), "train", spec, plugins=["activation_checkpointing"],
                    baseline=["activation_checkpointing"], compare=True, measure=FAST)
    cmp = info["comparison"]
    assert cmp["pairs"] >= 6 and len(cmp["per_pair"]) == cmp["pairs"]
    assert cmp["verdict"] in ("no significant difference", "inconclusive")
    assert cmp["ci95"][0] <= cmp["speedup"] <= cmp["ci95"][1]


def test_harness_run_and_the_pytest_plugin_judge_a_case_by_the_same_checks(tmp_path):
    """One case through the worker (as `harness run --inline` runs it) and through the pytest fixture: the same
    sides (harness.core.sides.build_sides), the same checks with the same values (harness.core.sides.run_checks)."""
    import json

    from harness.core import env as envmod
    from harness.core import worker
    from harness.core.plugins import load_registry
    from harness.core.results import write_json
    from harness.core.runner import job_for
    from harness.core.suite import load_suite

    spec = {"model": "micro", "batch": 2, "seq_len": 16, "steps": 2}
    suite_path = tmp_path / "s.yaml"
    suite_path.write_text(
        "name: s\ndevice: cpu\nmeasure: {min_pairs: 3, min_samples: 3, min_time_s: 0.05, max_time_s: 0.5,\n"
        "          warmup_min_s: 0.02, warmup_max_s: 0.2}\n"
        f"workloads:\n  train: {json.dumps({'type': 'train', **spec})}\n"
        "cases:\n  - {workload: train, plugins: [{gradient_accumulation: {micro_batches: 2}}]}\n")
    suite = load_suite(suite_path, load_registry())
    job, result = tmp_path / "job.json", tmp_path / "result.json"
    write_json(job, job_for(suite.cases[0], suite, envmod.detect("cpu", 1), 1, []))
    worker.run_job(str(job), str(result))
    by_worker = json.loads(result.read_text())["checks"]
    by_pytest = run_case(FakeBenchmark(), "train", spec, plugins=[{"gradient_accumulation": {"micro_batches": 2}}])
    assert [c["name"] for c in by_worker] == [c["name"] for c in by_pytest["checks"]] != []
    assert by_worker == json.loads(json.dumps(by_pytest["checks"]))
