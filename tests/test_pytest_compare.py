"""The pytest plugin's `compare=True`: both sides in paired blocks, judged by the same rule as `harness run`."""

from harness.pytest_plugin import run_case
from harness.timing import MeasureSettings


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
