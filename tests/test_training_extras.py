"""gradient_accumulation, optimizer_impl and lora on `nano`: each invariant holds, a broken variant fails it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness_plugins.ddp import DDP, WorldParams
from harness_plugins.gradient_accumulation import AccumulationParams, GradientAccumulation
from harness_plugins.lora import LoRA, LoRAParams
from harness_plugins.mixed_precision import MixedPrecision, MixedPrecisionParams
from harness_plugins.optimizer_impl import OptimizerImpl, OptimizerImplParams

from harness.core.optimization import ParamError, build_params
from harness.core.plugins import load_registry
from harness.core.workload import RunContext
from harness.workloads.train import TrainRun, TrainSpec, TrainWorkload

ENV = {"device": "cpu", "peak": None}
SPEC = {"model": "nano", "batch": 4, "seq_len": 32, "steps": 3}


def build(opts=(), **overrides) -> TrainRun:
    ctx = RunContext(device=torch.device("cpu"), env=ENV, seed=0)
    return TrainWorkload().build(TrainSpec(**{**SPEC, **overrides}), list(opts), ctx)


def outputs(opts=(), **overrides) -> dict:
    return build(opts, **overrides).outputs()


def checks(opt, baseline, optimized) -> dict:
    return {c.name: c for c in opt.check(baseline, optimized)}


@pytest.fixture(scope="module")
def baseline() -> dict:
    return outputs()


def test_registered_as_training_optimizations():
    registry = load_registry()
    for name, cls in [
        ("gradient_accumulation", GradientAccumulation),
        ("optimizer_impl", OptimizerImpl),
        ("lora", LoRA),
    ]:
        assert registry.optimizations[name] is cls and cls.kind == "training"


@pytest.mark.parametrize(
    "cls, values, field",
    [
        (AccumulationParams, {"micro_batches": 0}, "micro_batches"),
        (OptimizerImplParams, {"impl": "adam"}, "impl"),
        (LoRAParams, {"rank": 0}, "rank"),
        (LoRAParams, {"alpha": 0.0}, "alpha"),
        (LoRAParams, {"targets": []}, "targets"),
        (LoRAParams, {"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_params_are_refused_naming_the_field(cls, values, field):
    with pytest.raises(ParamError) as err:
        build_params(cls, values)
    assert err.value.field == field


def test_accumulation_refuses_a_batch_it_cannot_split():
    # validate() runs inside build, before apply: the same message `harness validate` gives
    with pytest.raises(ParamError, match=r"does not split into 1 rank\(s\) x 4") as err:
        build([GradientAccumulation(AccumulationParams(4))], batch=6)
    assert err.value.field == "micro_batches"


@pytest.mark.parametrize("k", [2, 4])
def test_accumulation_equals_one_big_batch_with_fewer_activation_bytes(baseline, k):
    opt = GradientAccumulation(AccumulationParams(k))
    run = build([opt])
    result = checks(opt, baseline, run.outputs())
    assert all(c.passed for c in result.values()), result
    # the saved bytes are one micro-batch's, not the sum over k: they fall about k-fold
    assert result["activation_bytes_lower"].values["ratio"] == pytest.approx(1 / k, rel=0.05)
    assert run.info["micro_batch"] == SPEC["batch"] // k


class NoLossScale(GradientAccumulation):
    """Broken: sums the micro-batch gradients without the 1/k scale (k times the true gradient)."""

    def apply(self, run):
        super().apply(run)
        k, step = self.params.micro_batches, run.train_step
        run.train_step = lambda x, y, keep_grads=False: step(x, y, keep_grads) / k
        forward = run.model.forward
        run.model.forward = lambda idx, targets=None, **kw: (lambda out: (out[0], out[1] * k))(
            forward(idx, targets, **kw))  # each micro-batch's loss k times larger: loss / k undone


class StepPerMicroBatch(GradientAccumulation):
    """Broken: an optimizer step after every micro-batch (k small-batch steps instead of one)."""

    def apply(self, run):
        super().apply(run)
        k, step = self.params.micro_batches, run.train_step
        run.knobs.micro_batches = 1

        def train_step(x, y, keep_grads=False):
            pairs = list(zip(x.chunk(k), y.chunk(k)))
            return sum(step(xm, ym, keep_grads and i == k - 1) for i, (xm, ym) in enumerate(pairs)) / k
        run.train_step = train_step


def test_accumulation_check_catches_a_missing_scale_and_a_step_per_micro_batch(baseline):
    unscaled = NoLossScale(AccumulationParams(2))
    result = checks(unscaled, baseline, outputs([unscaled]))
    assert not result["first_step_grads_equal"].passed
    assert result["loss_equal_one_big_batch"].passed  # the reported loss is still the mean
    stepping = StepPerMicroBatch(AccumulationParams(2))
    assert not checks(stepping, baseline, outputs([stepping]))["params_equal_one_big_batch"].passed


def test_accumulation_composes_with_fp16_grad_scaler():
    fp16 = [MixedPrecision(MixedPrecisionParams("fp16"))]
    opt = GradientAccumulation(AccumulationParams(2))
    out = outputs([*fp16, opt])
    result = checks(opt, outputs(fp16), out)
    assert all(c.passed for c in result.values()), result
    assert "params_equal_one_big_batch" not in result  # half-precision round-off: grads and loss compared
    assert out["skipped_steps"] == 0
    assert not checks(
        NoLossScale(AccumulationParams(2)), outputs(fp16), outputs([*fp16, NoLossScale(AccumulationParams(2))])
    )["first_step_grads_equal"].passed


def test_accumulation_inside_ddp_equals_one_process_and_all_reduces_once_per_step(tmp_path):
    out = tmp_path / "checks.json"
    script = Path(__file__).with_name("accumulation_ddp_script.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone", str(script), out]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert all(c["passed"] for c in results["checks"]), results["checks"]
    assert results["buckets_per_step"] == {"1": 1, "2": 1}  # no_sync: the first micro-batch is not reduced


@pytest.mark.parametrize("impl", ["fused", "for_loop"])
def test_optimizer_impl_params_equal_the_default_foreach(baseline, impl):
    opt = OptimizerImpl(OptimizerImplParams(impl))
    assert opt.supports(ENV) is None  # fused AdamW runs on the CPU in torch 2.13
    run = build([opt])
    assert run.info["optimizer"] == f"adamw({impl})"
    assert (impl == "fused") == bool(run.optimizer.defaults["fused"])
    result = checks(opt, baseline, run.outputs())
    assert all(c.passed for c in result.values()), result


def test_optimizer_impl_check_catches_a_changed_learning_rate(baseline):
    opt = OptimizerImpl(OptimizerImplParams("fused"))
    assert not checks(opt, baseline, outputs([opt], lr=1.1e-3))["params_equal_baseline_impl"].passed


def test_default_optimizer_is_unchanged_without_the_plugin():
    assert build().info["optimizer"] == "adamw(foreach)"  # CPU default; fused stays CUDA's default


@pytest.fixture(scope="module")
def corpus_baseline() -> dict:
    return outputs(data="corpus")


def test_lora_starts_as_base_trains_adapters_only_and_shrinks_optimizer_state(corpus_baseline):
    opt = LoRA()
    run = build([opt], data="corpus")
    out = run.outputs()
    result = checks(opt, corpus_baseline, out)
    assert all(c.passed for c in result.values()), result
    assert result["step0_logits_equal_base"].values["max_abs_diff"] == 0
    assert out["losses"][0] == corpus_baseline["losses"][0]  # B = 0: the same first loss, bitwise
    trainable = run.info["trainable_params"]
    assert 0 < run.info["trainable_fraction"] < 0.15
    assert out["memory"]["gradients"] == 4 * trainable  # only adapters have gradients
    assert out["memory_estimate"]["optimizer_states"] == 8 * trainable
    assert result["optimizer_states_only_for_adapters"].values["ratio"] < 0.15
    assert set(out["grads"]) == {n for n in out["params"] if ".lora_" in n}


def test_lora_loss_check_holds_on_random_tokens_and_fails_when_nothing_trains():
    opt = LoRA()
    baseline = outputs()
    result = checks(opt, baseline, outputs([opt]))
    assert result["loss_decreases"].passed, result["loss_decreases"]  # the same batch: memorised, even if random
    frozen = LoRA()
    run = build([frozen])
    for group in run.optimizer.param_groups:
        group["lr"] = 0.0
    result = checks(frozen, baseline, run.outputs())
    assert not result["loss_decreases"].passed and not result["adapters_trained"].passed


class TrainableBase(LoRA):
    """Broken: adds the adapters but leaves every base weight trainable (full fine-tuning plus adapters)."""

    def apply(self, run):
        super().apply(run)
        for p in run.raw_model.parameters():
            p.requires_grad_(True)
        run.optimizer = run.make_optimizer(run.raw_model.parameters())


def test_lora_check_catches_trainable_base_weights(corpus_baseline):
    opt = TrainableBase()
    result = checks(opt, corpus_baseline, outputs([opt], data="corpus"))
    assert not result["base_weights_unchanged"].passed
    assert not result["optimizer_states_only_for_adapters"].passed


def test_lora_targets_choose_the_linears():
    run = build([LoRA(LoRAParams(rank=2, targets=["lm_head"]))])
    assert {n for n, p in run.raw_model.named_parameters() if p.requires_grad} == {
        "lm_head.lora_a.weight",
        "lm_head.lora_b.weight",
    }
    assert run.info["trainable_params"] == 2 * (64 + 256)


def test_lora_must_come_before_ddp():
    import torch.distributed as dist

    try:
        with pytest.raises(ValueError, match="before ddp"):
            build([DDP(WorldParams(1)), LoRA()])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_train_workload_accepts_a_reference_model_and_fine_tunes_it(monkeypatch):
    import harness.models.reference
    from harness.models.gpt import GPT, ModelArgs

    with pytest.raises(ParamError, match="unknown reference") as err:
        build_params(TrainSpec, {"model": "reference:nope"})
    assert err.value.field == "model"
    trained = GPT(ModelArgs.from_name("micro")).eval()  # stands in for the cached reference (no training here)
    monkeypatch.setattr(harness.models.reference, "load_reference", lambda name, device: trained)
    run = build([LoRA(LoRAParams(rank=2))], model="reference:draft", data="corpus")
    assert run.raw_model is trained and trained.training and run.info["model"] == "reference:draft"
    assert run.args.n_embd == 32 and run.outputs()["facts"]["lora"]["step0_logits_equal"]
