"""Training plugins in one process: each invariant holds on `nano`, and a broken variant fails the check."""

import time

import pytest
import torch
import torch.distributed as dist
from harness_plugins.activation_checkpointing import ActivationCheckpointing, CheckpointParams
from harness_plugins.ddp import DDP, WorldParams
from harness_plugins.mixed_precision import TF32, MixedPrecision, MixedPrecisionParams
from harness_plugins.torch_compile import CompileParams, TorchCompile
from harness_plugins.zero import Zero, ZeroParams

from harness.core.optimization import ParamError, build_params
from harness.core.plugins import load_registry
from harness.core.workload import RunContext
from harness.workloads.train import TrainSpec, TrainWorkload

ENV = {"device": "cpu", "peak": None}


def outputs(opts=(), seed: int = 0, **overrides) -> dict:
    spec = TrainSpec(**{"model": "nano", "batch": 2, "seq_len": 32, "steps": 3, **overrides})
    ctx = RunContext(device=torch.device("cpu"), env=ENV, seed=seed)
    return TrainWorkload().build(spec, list(opts), ctx).outputs()


@pytest.fixture(scope="module")
def baseline() -> dict:
    return outputs()


@pytest.fixture
def one_rank_group():
    """Leaves no process group behind (ddp / zero at world_size 1 make a one-rank group themselves)."""
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def checks(opt, baseline, optimized) -> dict:
    return {c.name: c for c in opt.check(baseline, optimized)}


def test_all_training_plugins_register():
    registry = load_registry()
    for name, cls in [("mixed_precision", MixedPrecision), ("activation_checkpointing", ActivationCheckpointing),
                      ("ddp", DDP), ("zero", Zero), ("tf32", TF32), ("torch_compile", TorchCompile)]:
        assert registry.optimizations[name] is cls and cls.kind == "training"


@pytest.mark.parametrize("cls, values, field", [
    (MixedPrecisionParams, {"dtype": "fp8"}, "dtype"), (CheckpointParams, {"every": 0}, "every"),
    (WorldParams, {"world_size": 0}, "world_size"), (ZeroParams, {"stage": "zero3"}, "stage"),
    (CompileParams, {"mode": "fast"}, "mode")])
def test_bad_params_are_refused_naming_the_field(cls, values, field):
    with pytest.raises(ParamError) as err:
        build_params(cls, values)
    assert err.value.field == field


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_loss_close_to_fp32(baseline, dtype):
    opt = MixedPrecision(MixedPrecisionParams(dtype))
    assert opt.supports(ENV) is None  # both autocast dtypes run on CPU with torch 2.13
    result = checks(opt, baseline, outputs([opt]))
    assert result["loss_close_to_fp32"].passed, result
    assert result["loss_close_to_fp32"].values["abs_diff"] > 0  # really ran in lower precision
    if dtype == "fp16":
        assert result["grad_scaler_stepped"].passed and result["grad_scaler_stepped"].values["skipped_steps"] == 0


def test_tf32_is_refused_off_cuda_and_before_ampere():
    assert "CUDA" in TF32().supports(ENV)
    old_gpu = {"device": "cuda:0", "cuda": {"devices": [{"capability": "7.5"}]}}
    assert "8.0" in TF32().supports(old_gpu)
    assert TF32().supports({"device": "cuda:0", "cuda": {"devices": [{"capability": "9.0"}]}}) is None


def test_mixed_precision_check_catches_a_wrong_learning_rate(baseline):
    opt = MixedPrecision()
    result = checks(opt, baseline, outputs([opt], lr=2e-2))
    assert not result["loss_close_to_fp32"].passed


class NeverSteps(MixedPrecision):
    """fp16 with a loss scale so large that every scaled gradient overflows: each step is skipped."""

    def apply(self, run):
        super().apply(run)
        run.knobs.grad_scaler = torch.amp.GradScaler("cpu", init_scale=1e38)


def test_grad_scaler_check_fails_when_every_step_is_skipped(baseline):
    opt = NeverSteps(MixedPrecisionParams("fp16"))
    out = outputs([opt])
    assert out["skipped_steps"] == 3
    assert not checks(opt, baseline, out)["grad_scaler_stepped"].passed


@pytest.mark.parametrize("every, blocks", [(1, "2 of 2"), (2, "1 of 2")])
def test_activation_checkpointing_grads_equal_and_fewer_saved_bytes(baseline, every, blocks):
    opt = ActivationCheckpointing(CheckpointParams(every))
    spec = dict(model="nano", batch=2, seq_len=32, steps=3)
    run = TrainWorkload().build(TrainSpec(**spec), [opt], RunContext(torch.device("cpu"), ENV))
    assert run.info["checkpointed_blocks"] == blocks
    result = checks(opt, baseline, run.outputs())
    assert result["grads_equal_plain"].passed, result
    assert result["activation_bytes_lower"].passed and result["activation_bytes_lower"].values["ratio"] < 0.9


def test_activation_checkpointing_check_catches_other_weights(baseline):
    opt = ActivationCheckpointing()
    assert not checks(opt, baseline, outputs([opt], seed=1))["grads_equal_plain"].passed


def test_checkpointing_with_bf16_against_bf16_baseline_is_exact_and_against_fp32_is_refused(baseline):
    bf16 = outputs([MixedPrecision()])
    opt = ActivationCheckpointing()
    combined = outputs([MixedPrecision(), opt])
    assert checks(opt, bf16, combined)["grads_equal_plain"].passed
    refused = checks(opt, baseline, combined)["grads_equal_plain"]
    assert not refused.passed and refused.values["optimized_precision"] == "bfloat16"


def test_checkpointing_half_precision_tolerance_on_cuda_allows_ulp_flips_but_not_other_weights():
    bf16 = outputs([MixedPrecision()])
    opt = ActivationCheckpointing()
    flipped = {**bf16, "device": "cuda", "grads": {n: g * (1 + 2**-7) for n, g in bf16["grads"].items()}}
    assert checks(opt, bf16, flipped)["grads_equal_plain"].passed  # one bf16 ulp everywhere (GPU round-off)
    assert not checks(opt, bf16, {**flipped, "device": "cpu"})["grads_equal_plain"].passed  # CPU: fp32 round-off
    other = {**outputs([MixedPrecision(), opt], seed=1), "device": "cuda"}
    assert not checks(opt, bf16, other)["grads_equal_plain"].passed


def test_ddp_needs_a_process_group_for_more_than_one_rank():
    assert DDP().processes() == 2
    with pytest.raises(RuntimeError, match="process group"):
        outputs([DDP(WorldParams(2))])


def test_ddp_world_size_one_equals_single_process(baseline, one_rank_group):
    opt = DDP(WorldParams(1))
    result = checks(opt, baseline, outputs([opt]))
    assert all(c.passed for c in result.values()), result


def test_zero_world_size_one_is_unsharded_and_equal(baseline, one_rank_group):
    opt = Zero(ZeroParams("zero1", 1))
    result = checks(opt, baseline, outputs([opt]))
    assert all(c.passed for c in result.values()), result
    states = result["optimizer_states_bytes_match_formula"].values
    assert states["measured_per_rank"] == states["baseline_per_rank"]  # one rank holds every Adam state


def test_fsdp_refuses_a_model_already_wrapped_in_ddp(one_rank_group):
    with pytest.raises(ValueError, match="replaces DDP"):
        outputs([DDP(WorldParams(1)), Zero(ZeroParams("fsdp_full", 1))])


def test_torch_compile_supports_says_why_not():
    assert "CUDA" in TorchCompile(CompileParams("reduce-overhead")).supports(ENV)


@pytest.mark.slow
def test_torch_compile_loss_close_to_eager_and_compile_time_is_the_first_call(baseline):
    """The compile happens in the first step of outputs(): first_call_s holds it (Dynamo's own compile-time
    record says how much), and a step after it is warm."""
    import torch._dynamo.utils as dynamo_utils

    opt = TorchCompile()
    if (reason := opt.supports(ENV)) is not None:
        pytest.skip(reason)
    torch._dynamo.reset()
    dynamo_utils.clear_compilation_metrics()
    spec = TrainSpec(model="nano", batch=2, seq_len=32, steps=3)
    run = TrainWorkload().build(spec, [opt], RunContext(device=torch.device("cpu"), env=ENV, seed=0))
    result = checks(opt, baseline, run.outputs())
    assert result["loss_close_to_eager"].passed, result
    compiled = sum(m.entire_frame_compile_time_s or 0 for m in dynamo_utils.get_compilation_metrics())
    start = time.perf_counter()
    run.timed_step()
    warm_step = time.perf_counter() - start
    assert compiled > 0 and run.first_call_s >= compiled  # the frame compile is inside the first call
    assert run.first_call_s > 10 * warm_step
