"""The training workload: spec validation, determinism, outputs, memory counted from tensors, metrics."""

import pytest
import torch

from harness.core.checks import tensors_check
from harness.core.optimization import ParamError, build_params
from harness.core.plugins import load_registry
from harness.core.workload import RunContext
from harness.workloads.train import TrainRun, TrainSpec, TrainWorkload

SPEC = dict(model="nano", batch=2, seq_len=16, steps=2)


def build(seed: int = 0, peak=None, **overrides) -> TrainRun:
    ctx = RunContext(device=torch.device("cpu"), env={"device": "cpu", "peak": peak}, seed=seed)
    return TrainWorkload().build(TrainSpec(**{**SPEC, **overrides}), [], ctx)


@pytest.mark.parametrize("values, field", [
    ({"model": "huge"}, "model"), ({"batch": 0}, "batch"), ({"seq_len": 257}, "seq_len"),
    ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr")])
def test_spec_rejects_bad_values_naming_the_field(values, field):
    with pytest.raises(ParamError) as err:
        build_params(TrainSpec, values)
    assert err.value.field == field


def test_corpus_batches_are_text_and_fixed_by_the_seed():
    a, b = build(data="corpus"), build(data="corpus")
    x, y = a.global_batches[0]
    assert torch.equal(x, b.global_batches[0][0]) and torch.equal(x[:, 1:], y[:, :-1])
    assert x.max() < 256 and a.outputs()["loss"] > 0


def test_spec_rejects_unknown_data_source():
    with pytest.raises(ParamError, match="synthetic"):
        build_params(TrainSpec, {"data": "wikipedia"})


def test_registered_as_train_workload():
    registry = load_registry()
    assert registry.workloads["train"] is TrainWorkload
    assert TrainWorkload.kind == "training"


def test_same_seed_gives_identical_outputs_and_another_seed_does_not():
    a, b, c = build().outputs(), build().outputs(), build(seed=1).outputs()
    assert a["losses"] == b["losses"]
    assert tensors_check("same", a["params"], b["params"], 0, 0).passed
    assert not tensors_check("other", a["params"], c["params"], 1e-4, 1e-5).passed


def test_outputs_hold_losses_first_grads_and_final_params_for_every_parameter():
    run = build()
    names = {n for n, _ in run.raw_model.named_parameters()}
    out = run.outputs()
    assert len(out["losses"]) == SPEC["steps"] and out["loss"] == out["losses"][-1]
    assert set(out["params"]) == set(out["grads"]) == names
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in out["params"].values())
    initial = build().raw_model.state_dict()
    assert not torch.equal(out["params"]["lm_head.weight"], initial["lm_head.weight"])  # K steps were taken
    assert out["activation_bytes"] > 0


def test_step_trains_on_the_next_fixed_batch():
    run = build()
    run.outputs()
    before = run.raw_model.lm_head.weight.detach().clone()
    run.timed_step()
    assert run.steps_done == SPEC["steps"] + 1
    assert not torch.equal(before, run.raw_model.lm_head.weight)


def test_memory_counts_fp32_adamw_bytes_and_matches_the_estimate():
    run = build()
    run.outputs()
    n = run.raw_model.num_params()
    memory, estimate = run.memory(), run.memory_estimate()
    assert memory["weights"] == estimate["weights"] == 4 * n
    assert memory["gradients"] == estimate["gradients"] == 4 * n
    # exp_avg + exp_avg_sq = 8 bytes per parameter, plus one 4-byte step counter per parameter tensor
    tensors = len(list(run.raw_model.parameters()))
    assert memory["optimizer_states"] == estimate["optimizer_states"] + 4 * tensors


def test_extra_metrics_follow_the_definitions_and_mfu_needs_a_known_peak():
    run = build()
    run.outputs()
    run.timed_step()
    m = run.extra_metrics(0.5)
    tokens = SPEC["batch"] * SPEC["seq_len"]
    assert m["tokens_per_s"] == tokens / 0.5 and m["samples_per_s"] == SPEC["batch"] / 0.5
    assert m["model_tflops"] == pytest.approx(run.raw_model.flops_per_token(SPEC["seq_len"]) * tokens / 0.5 / 1e12)
    assert m["mfu"] is None and m["loss"] > 0
    peaked = build(peak={"fp32_flops": 1e12, "bf16_flops": 4e12})
    m = peaked.extra_metrics(0.5)
    assert m["mfu"] == pytest.approx(m["model_tflops"] * 1e12 / 1e12) and m["mfu_peak"] == "fp32_flops"
    peaked.knobs.autocast_dtype = torch.bfloat16
    assert peaked.extra_metrics(0.5)["mfu"] == pytest.approx(m["mfu"] / 4)


def test_global_batch_that_does_not_split_over_ranks_is_refused():
    run = build(batch=3)
    with pytest.raises(ParamError, match="multiple of 2"):
        run.shard_batches(0, 2)


def test_shard_batches_takes_this_ranks_rows_of_the_global_batch():
    run = build(batch=4)
    run.shard_batches(1, 2)
    x_global, _ = run.global_batches[0]
    assert torch.equal(run.batches[0][0], x_global[2:4]) and run.distributed
    assert run.units == {"tokens": 4 * SPEC["seq_len"], "samples": 4}


@pytest.mark.parametrize("name", ["training", "gpu-training"])
def test_training_suites_load_and_cover_every_training_plugin(name):
    from harness.core.suite import builtin_suite_path, load_suite

    suite = load_suite(builtin_suite_path(name), load_registry())
    used = {use.name for case in suite.cases for use in case.plugins}
    assert {"mixed_precision", "activation_checkpointing", "ddp", "zero", "torch_compile"} <= used
    for case in suite.cases:
        if any(use.name == "activation_checkpointing" for use in case.plugins):
            # checkpointing's gradients can only be compared at the same precision on both sides
            has_mp = any(use.name == "mixed_precision" for use in case.plugins)
            assert has_mp == any(use.name == "mixed_precision" for use in case.baseline)


def test_tolerances_widen_to_the_baselines_own_repeat_noise():
    """On CUDA the worker repeats the baseline's correctness pass; checks then allow 4 x its difference, and a
    deviation beyond that still fails. On the CPU the repeat is identical (noise 0)."""
    import torch

    from harness.core.checks import loss_check, repeat_noise, tensors_check
    from harness.core.sides import repeat_noise_pass
    from harness.core.workload import RunContext
    from harness.workloads.train import TrainSpec, TrainWorkload

    ctx = RunContext(device=torch.device("cpu"), env={}, seed=0)
    spec = TrainSpec(model="nano", batch=2, seq_len=16, steps=2)
    workload = TrainWorkload()
    first = workload.build(spec, [], ctx).outputs()
    noise = repeat_noise_pass(workload, spec, [], ctx, first)
    assert set(noise) == {"params", "grads", "loss"} and max(noise["params"].values()) == 0.0 == noise["loss"]

    base = {"w": torch.zeros(3)}
    moved = {"w": torch.tensor([0.0, 3e-4, 0.0])}
    assert not tensors_check("p", base, moved, 0.0, 1e-5).passed
    widened = tensors_check("p", base, moved, 0.0, 1e-5, noise={"w": 1e-4})
    assert widened.passed and "repeat difference" in widened.tolerance and widened.values["repeat_noise_max"] == 1e-4
    assert not tensors_check("p", base, {"w": torch.tensor([0.0, 5e-4, 0.0])}, 0.0, 1e-5, noise={"w": 1e-4}).passed
    outs = {"loss": 2.0, "losses": [2.0], "noise": repeat_noise({"loss": 2.0}, {"loss": 2.001})}
    assert loss_check("l", outs, {"loss": 2.003, "losses": [2.003]}, 1e-4).passed  # within 4 x 1e-3
    assert not loss_check("l", outs, {"loss": 2.005, "losses": [2.005]}, 1e-4).passed
