"""A real user's run through the CLI: training and inference plugins, a torchrun case, results and report."""

import json

from tests.conftest import harness_cli

SUITE = """\
name: e2e <b>escaped</b>
description: Tiny training and inference cases through the real runner.
device: cpu
threads: 2
measure: {min_pairs: 5, min_samples: 3, min_time_s: 0.05, max_time_s: 2, warmup_min_s: 0.02, warmup_max_s: 0.3}
workloads:
  train: {type: train, model: micro, batch: 4, seq_len: 32, steps: 2}
  gen: {type: generate, model: micro, batch: 1, prompt_len: 8, new_tokens: 8, prompts: synthetic}
cases:
  - workload: train
    plugins: [activation_checkpointing]
  - workload: train
    plugins: [ddp]
  - workload: gen
    plugins: [{kv_cache: {kind: static}}]
  - workload: gen
    plugins: [{kv_cache: {kind: static}}]
    baseline: none
"""


def test_suite_runs_end_to_end(tmp_path):
    suite = tmp_path / "e2e.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    proc = harness_cli("run", suite, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["schema_version"] == 2 and all("metrics" not in c for c in results["cases"])
    cases = {c["id"]: c for c in results["cases"]}
    assert list(cases) == ["train/activation_checkpointing", "train/ddp", "gen/kv_cache(kind=static)",
                           "gen/kv_cache(kind=static) alone"]
    alone = cases.pop("gen/kv_cache(kind=static) alone")
    assert alone["status"] == "ok" and "baseline" not in alone and alone["optimized"]["latency"]["median"] > 0
    assert alone["comparison"]["verdict"] == "n/a" and alone["comparison"]["speedup"] is None
    for case in cases.values():
        assert case["status"] == "ok" and case["checks"] and all(ch["passed"] for ch in case["checks"])
        for side in ("baseline", "optimized"):
            stats = case[side]["latency"]
            # min_pairs blocks of at least one sample each (a busy machine can leave one per block)
            assert stats["rounds"] == len(stats["data"]) >= 5 and stats["min"] <= stats["median"] <= stats["max"]
            assert all(v > 0 for v in case[side]["throughput"].values())
        assert case["comparison"]["ci95"][0] <= case["comparison"]["speedup"] <= case["comparison"]["ci95"][1]
        m, cmp = case["measurement"], case["comparison"]
        assert m["pairs"] == cmp["pairs"] == len(cmp["per_pair"]) == len(m["order"]) >= 5
        assert set(m["order"]) <= {"BO", "OB"}
        for side in ("baseline", "optimized"):
            assert len(case[side]["latency"]["blocks"]) == m["pairs"]
            assert sum(case[side]["latency"]["blocks"]) == len(case[side]["latency"]["data"])
        load = m["foreign_load"]
        assert 0 <= load["foreign_cpu"] <= 1 and len(load["per_pair"]) == m["pairs"] and load["cores"] >= 1
        assert cmp["verdict"] in ("faster", "slower", "no significant difference", "inconclusive")
        assert (cmp["verdict"] == "inconclusive") == bool(cmp["reason"])
    ddp = cases["train/ddp"]
    assert ddp["processes"] == 2 and ddp["optimized"]["distributed"] and not ddp["baseline"]["distributed"]
    assert ddp["optimized"]["throughput"]["tokens_per_s"] > 0 and ddp["measurement"]["processes"] == 2
    ckpt = cases["train/activation_checkpointing"]["optimized"]["memory"]["breakdown"]
    # AdamW: two fp32 moments per weight, plus a scalar step count per tensor
    assert ckpt["weights"] > 0 and 2 * ckpt["weights"] <= ckpt["optimizer_states"] < 2 * ckpt["weights"] + 1024
    html = (out / "report.html").read_text()
    assert "e2e &lt;b&gt;escaped&lt;/b&gt;" in html and "<b>escaped</b>" not in html
    assert "train/ddp" in html and "kv_cache" in html
    assert "ok (timed alone)" in html and 'id="alone"' in html
    assert "timed alone: median " in proc.stderr
    markdown = harness_cli("export", out / "results.json", "--format", "markdown")
    assert markdown.returncode == 0 and "| gen/kv_cache(kind=static) alone | timed alone | median " in markdown.stdout
    assert "train/activation_checkpointing" in proc.stdout  # the summary table
