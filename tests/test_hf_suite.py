"""A local Hugging Face model (`model: hf:PATH`) runs through the inference suite machinery, via the CLI."""

import json

import pytest
import torch

from tests.conftest import harness_cli


def test_hf_model_runs_through_an_inference_suite(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=256, n_positions=128, n_embd=32, n_layer=2, n_head=4)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "tiny-gpt2")
    suite = tmp_path / "hf.yaml"
    suite.write_text(f"""\
name: hf
device: cpu
measure: {{min_pairs: 5, min_samples: 3, min_time_s: 0.05, max_time_s: 0.5, warmup_min_s: 0.02, warmup_max_s: 0.3}}
workloads:
  gen: {{type: generate, model: "hf:{tmp_path / 'tiny-gpt2'}", batch: 2, prompt_len: 16, new_tokens: 8}}
cases:
  - workload: gen
    plugins: [{{kv_cache: {{kind: dynamic}}}}]
  - workload: gen
    plugins: [{{kv_cache: {{kind: dynamic}}}}, {{batching: {{batch_size: 2}}}}]
    baseline: [{{kv_cache: {{kind: dynamic}}}}, {{batching: {{batch_size: 2, mode: sequential}}}}]
""")
    proc = harness_cli("run", suite, "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads((tmp_path / "run" / "results.json").read_text())["cases"]
    assert [c["status"] for c in cases] == ["ok", "ok"]
    for case in cases:
        assert case["checks"] and all(ch["passed"] for ch in case["checks"])
        assert case["optimized"]["info"]["model"].startswith("hf:")
    names = {ch["name"] for ch in cases[0]["checks"]}
    assert "tokens_identical_to_no_cache" in names
