"""Training on a user's hf: model: every training plugin on tiny GPT-2 and Llama shapes (built here, no download),
each invariant checked, and a broken variant of each caught. DDP and FSDP run under torchrun with 2 gloo ranks.
torch_compile wraps `run.model` whatever it is (its check is tested on the built-in GPT; on these models it
compiled and passed in 40 s, too long to repeat in every CI run)."""

from __future__ import annotations

import json

import pytest
import torch
from harness_plugins.activation_checkpointing import ActivationCheckpointing, CheckpointParams
from harness_plugins.gradient_accumulation import AccumulationParams, GradientAccumulation
from harness_plugins.lora import LoRA, LoRAParams
from harness_plugins.mixed_precision import MixedPrecision, MixedPrecisionParams
from harness_plugins.optimizer_impl import OptimizerImpl, OptimizerImplParams

from harness.core.optimization import ParamError
from harness.core.workload import RunContext
from harness.workloads.train import TrainSpec, TrainWorkload
from tests.conftest import harness_cli

transformers = pytest.importorskip("transformers")
ENV = {"device": "cpu", "peak": None}


def save_tiny(kind: str, path) -> str:
    """A tiny randomly initialised transformers causal LM written by save_pretrained; returns its hf: name."""
    torch.manual_seed(0)
    if kind == "gpt2":  # dropout 0.1 in its config (transformers' default): the harness turns it off
        config = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
        model = transformers.GPT2LMHeadModel(config)
    else:  # grouped-query attention, untied head
        config = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path)
    return f"hf:{path}"


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def hf_model(request, tmp_path_factory) -> str:
    return save_tiny(request.param, tmp_path_factory.mktemp(request.param))


def spec(model: str, **overrides) -> TrainSpec:
    return TrainSpec(**{"model": model, "batch": 4, "seq_len": 16, "steps": 3, **overrides})


def build(model: str, opts=(), **overrides):
    ctx = RunContext(device=torch.device("cpu"), env=ENV, seed=0)
    return TrainWorkload().build(spec(model, **overrides), list(opts), ctx)


def checks(opt, baseline: dict, optimized: dict) -> dict:
    return {c.name: c for c in opt.check(baseline, optimized)}


@pytest.fixture(scope="module")
def baseline(hf_model) -> dict:
    return build(hf_model).outputs()


def test_hf_model_trains_deterministically_with_dropout_off(hf_model, baseline):
    run = build(hf_model)
    again = run.outputs()
    assert all(torch.equal(baseline["params"][n], again["params"][n]) for n in baseline["params"])
    assert baseline["first_batch_loss_after"] < baseline["losses"][0]  # it trains
    assert len(run.raw_model.blocks) == 2 and run.info["params"] == run.raw_model.num_params()
    if "gpt2" in hf_model:
        assert "resid_pdrop" in run.info["dropout_off"]
    assert all(m.p == 0 for m in run.raw_model.modules() if isinstance(m, torch.nn.Dropout))
    memory, estimate = baseline["memory"], run.memory_estimate()
    steps = 4 * len(list(run.raw_model.parameters()))  # AdamW's fp32 step counter per tensor, beside 8 Psi
    assert memory["weights"] == estimate["weights"]
    assert memory["optimizer_states"] == estimate["optimizer_states"] + steps
    assert memory["gradients"] == estimate["gradients"] and baseline["activation_bytes"] > 0


@pytest.mark.parametrize("every", [1, 2])
def test_checkpointing_uses_the_librarys_own_switch_and_keeps_gradients(hf_model, baseline, every):
    opt = ActivationCheckpointing(CheckpointParams(every))
    run = build(hf_model, [opt])
    layers = run.raw_model.blocks
    assert [layer.gradient_checkpointing for layer in layers] == [True, every == 1]  # transformers' own flag
    result = checks(opt, baseline, run.outputs())
    assert all(c.passed for c in result.values()), result
    assert result["grads_equal_plain"].values["max_abs_diff"] == 0.0  # recompute is bitwise on the CPU


def test_checkpointing_check_catches_other_gradients(hf_model, baseline):
    opt = ActivationCheckpointing(CheckpointParams(1))
    other = build(hf_model, [opt], lr=2e-3).outputs()
    other["grads"] = {n: g * 1.01 for n, g in other["grads"].items()}
    assert not checks(opt, baseline, other)["grads_equal_plain"].passed


def test_peft_lora_freezes_the_base_and_trains_adapters(hf_model, baseline):
    opt = LoRA(LoRAParams(rank=4))
    opt.validate(spec(hf_model), [opt])
    run = build(hf_model, [opt])
    assert type(run.raw_model.hf).__name__ == "PeftModelForCausalLM"  # peft's own model
    expected = "c_attn" if "gpt2" in hf_model else "q_proj, v_proj"  # peft's defaults for the architecture
    assert f"({expected}, peft)" in run.info["lora"]
    optimized = run.outputs()
    result = checks(opt, baseline, optimized)
    assert all(c.passed for c in result.values()), result
    assert optimized["memory"]["gradients"] < baseline["memory"]["gradients"] / 5


def test_peft_lora_check_catches_trainable_base_weights(hf_model, baseline):
    from tests.test_training_extras import TrainableBase

    opt = TrainableBase(LoRAParams(rank=4))
    result = checks(opt, baseline, build(hf_model, [opt]).outputs())
    assert not result["base_weights_unchanged"].passed and result["base_weights_unchanged"].values["changed"]


def test_lora_targets_are_checked_against_the_models_modules_at_validate_time(hf_model):
    opt = LoRA(LoRAParams(targets=["qkv"]))
    with pytest.raises(ParamError, match="name no module") as err:
        opt.validate(spec(hf_model), [opt])
    assert err.value.field == "targets"
    everything = LoRA(LoRAParams(rank=2, targets=["all-linear"]))
    everything.validate(spec(hf_model), [everything])
    assert "peft" in build(hf_model, [everything]).info["lora"]


def test_mixed_precision_and_accumulation_and_optimizer_impl_keep_their_invariants(hf_model, baseline):
    bf16 = MixedPrecision(MixedPrecisionParams("bf16"))
    result = checks(bf16, baseline, build(hf_model, [bf16]).outputs())
    assert result["loss_close_to_fp32"].passed and result["loss_close_to_fp32"].values["abs_diff"] > 0, result
    accumulate = GradientAccumulation(AccumulationParams(micro_batches=2))
    result = checks(accumulate, baseline, build(hf_model, [accumulate]).outputs())
    assert all(c.passed for c in result.values()), result
    loop = OptimizerImpl(OptimizerImplParams("for_loop"))
    result = checks(loop, baseline, build(hf_model, [loop]).outputs())
    assert all(c.passed for c in result.values()), result


def test_precision_and_optimizer_checks_catch_a_wrong_learning_rate(hf_model, baseline):
    bf16 = MixedPrecision(MixedPrecisionParams("bf16"))
    assert not checks(bf16, baseline, build(hf_model, [bf16], lr=5e-2).outputs())["loss_close_to_fp32"].passed
    loop = OptimizerImpl(OptimizerImplParams("for_loop"))
    assert not all(c.passed for c in checks(loop, baseline, build(hf_model, [loop], lr=2e-3).outputs()).values())


def test_accumulation_check_catches_a_missing_loss_division(hf_model, baseline):
    from tests.test_training_extras import NoLossScale

    opt = NoLossScale(AccumulationParams(micro_batches=2))
    assert not all(c.passed for c in checks(opt, baseline, build(hf_model, [opt]).outputs()).values())


def test_corpus_data_use_the_models_tokenizer_and_byte_ids_need_a_large_vocabulary(tmp_path):
    model = save_tiny("gpt2", tmp_path)
    with pytest.raises(ParamError, match="97-token vocabulary") as err:
        spec(model, data="corpus")
    assert err.value.field == "data"
    with pytest.raises(ParamError, match="seq_len must be in 1..64"):
        spec(model, seq_len=65)


SUITE = """\
name: hf-distributed
device: cpu
measure: {{min_pairs: 5, block_s: 0.02, min_samples: 5, min_time_s: 0.1, max_time_s: 2, warmup_max_s: 0.3,
          timeout_s: 240}}
workloads:
  train-hf: {{type: train, model: "hf:{path}", batch: 4, seq_len: 16, steps: 3}}
cases:
  - workload: train-hf
    plugins: [{{zero: {{stage: fsdp_full, world_size: 2}}}}]
    baseline: [{{ddp: {{world_size: 2}}}}]
  - workload: train-hf
    plugins: [lora, {{ddp: {{world_size: 2}}}}]
    baseline: [{{ddp: {{world_size: 2}}}}]
"""


@pytest.mark.slow
def test_ddp_fsdp_and_lora_under_torchrun_keep_their_invariants(tmp_path):
    """Two gloo ranks per case through the real worker: FSDP2 (wrapping the model's decoder layers) equals DDP
    with per-rank bytes by the ZeRO formula, peft LoRA under DDP (DDP alone: the multi-node test below)."""
    model = save_tiny("llama", tmp_path / "llama")
    suite_path = tmp_path / "hf.yaml"
    suite_path.write_text(SUITE.format(path=model[3:]))
    proc = harness_cli("run", str(suite_path), "--out", str(tmp_path / "out"), timeout=900)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cases = results["cases"]
    assert [c["status"] for c in cases] == ["ok"] * 2
    names = {c["id"]: {k["name"]: k for k in c["checks"]} for c in cases}
    for case in cases:
        assert case["checks"] and all(k["passed"] for k in case["checks"]), case["checks"]
    fsdp = next(v for k, v in names.items() if "zero" in k)
    assert fsdp["weights_bytes_match_formula"]["values"]["measured_per_rank"] < \
        0.6 * fsdp["weights_bytes_match_formula"]["values"]["baseline_per_rank"]
    assert "base_weights_unchanged" in next(v for k, v in names.items() if "lora" in k)


@pytest.mark.slow
def test_the_readme_multi_node_recipe_runs_ddp_on_a_user_model_across_two_torchrun_agents(tmp_path):
    """README: copy the runner's job file to every node and start `torchrun --nnodes 2 ... --rdzv-backend c10d
    -m harness.core.worker JOB RESULT` on each. Here two agents on this machine meet on the loopback address, one gloo
    rank each, and DDP on the tiny Llama must equal one process."""
    import socket
    import subprocess
    import sys

    from harness.core import env as envmod
    from harness.core.plugins import load_registry
    from harness.core.results import write_json
    from harness.core.runner import job_for
    from harness.core.suite import load_suite

    model = save_tiny("llama", tmp_path / "llama")
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(path=model[3:]).split("cases:")[0]
                    + "cases:\n  - {workload: train-hf, plugins: [{ddp: {world_size: 2}}]}\n")
    suite = load_suite(path, load_registry())
    job, result = tmp_path / "job.json", tmp_path / "result.json"
    write_json(job, job_for(suite.cases[0], suite, envmod.detect("cpu", 2), 2, []))
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                                "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                                "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "harness-test",
                                "-m", "harness.core.worker", str(job), str(result)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    logs = [a.communicate(timeout=300)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    record = json.loads(result.read_text())
    assert record["status"] == "ok" and record["checks"] and all(c["passed"] for c in record["checks"])
    assert record["optimized"]["distributed"] and not record["baseline"]["distributed"]
