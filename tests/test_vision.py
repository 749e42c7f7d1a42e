"""The `vision` workload and channels_last: an image classifier on the typed plugin contract. Every TrainAPI
optimization applies to it unchanged and keeps its invariant; channels_last (VisionAPI) is checked and refused
where it does not apply; a toy classifier without TrainAPI is refused at validate, one on TrainLoop is not."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch
from harness_plugins.channels_last import ChannelsLast

from harness.api import ParamError, RunContext, TrainAPI
from harness.core.optimization import interface_members, missing_members
from harness.core.plugins import load_registry
from harness.core.sides import build_sides, run_checks
from harness.workloads.vision import VisionAPI, VisionRun, VisionSpec, VisionWorkload
from tests.conftest import FIXTURES, harness_cli

ENV = {"device": "cpu", "peak": None}
TOY = FIXTURES / "vision_toy"
TINY = {"model": "resnet_tiny", "batch": 8, "image_size": 32, "steps": 3, "lr": 1e-3}
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.fixture(scope="module")
def registry():
    return load_registry()


def build(spec: VisionSpec, opts=(), seed: int = 0) -> VisionRun:
    return VisionWorkload().build(spec, list(opts), RunContext(torch.device("cpu"), ENV, seed=seed))


def case(registry, spec: VisionSpec, plugins, baseline=()) -> dict[str, dict]:
    """Both sides built as the worker builds them (build_sides, Workload.build), checks by name."""
    sides = build_sides(registry, {"baseline": list(baseline), "optimized": list(plugins)}, ENV, VisionWorkload)
    outputs = {side: VisionWorkload().build(spec, opts, RunContext(torch.device("cpu"), ENV)).outputs()
               for side, opts in sides.items()}
    return {c["name"]: c for c in run_checks(sides, outputs)}


def test_vision_registers_builds_and_trains(registry):
    assert registry.workloads["vision"] is VisionWorkload and VisionWorkload.kind == "training"
    assert registry.optimizations["channels_last"] is ChannelsLast and ChannelsLast.kind == "training"
    run = build(VisionSpec(**TINY))
    assert missing_members(VisionRun, VisionAPI) == [] and missing_members(VisionRun, TrainAPI) == []
    assert run.units == {"samples": 8} and len(run.blocks()) == 4
    x, y = run.batches[0]
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    out = run.outputs()
    assert {"losses", "grads", "params", "loss", "precision", "device", "activation_bytes", "memory",
            "memory_estimate", "facts", "first_batch_loss_after"} <= out.keys()
    assert len(out["losses"]) == 3 and out["precision"] == "fp32" and out["activation_bytes"] > 0
    assert out["grads"].keys() == out["params"].keys() and "net.conv1.weight" in out["grads"]
    assert out["first_batch_loss_after"] < out["losses"][0]  # class patterns are learnable: it trained
    run.step()
    assert run.extra_metrics(0.1)["samples_per_s"] == 80


@pytest.mark.parametrize("model, blocks", [("resnet18", 8), ("resnet50", 16)])
def test_resnets_have_torchvisions_shape_and_flops(model, blocks):
    run = build(VisionSpec(model=model, batch=2, image_size=224, classes=1000, steps=1))
    assert len(run.blocks()) == blocks
    params = sum(p.numel() for p in run.raw_model.parameters())
    gmacs, millions = {"resnet18": (1.81, 11.69), "resnet50": (4.09, 25.56)}[model]  # torchvision's model cards
    assert abs(params / 1e6 - millions) < 0.01
    assert abs(run.flops_per_step() / (3 * 2 * 2) / 1e9 - gmacs) < 0.01  # 3 x forward, 2 FLOPs a MAC, batch 2


@pytest.mark.parametrize("values, field, words", [
    ({"batch": 0}, "batch", ">= 1"), ({"image_size": 8}, "image_size", "16..1024"),
    ({"classes": 1}, "classes", ">= 2"), ({"steps": 0}, "steps", ">= 1"), ({"lr": 0.0}, "lr", "> 0"),
    ({"model": "resnet19"}, "model", "unknown model 'resnet19'"),
    ({"model": "py:no_such_module_here:make"}, "model", "ModuleNotFoundError"),
    ({"model": "py:json:no_such_factory"}, "model", "AttributeError"),
    ({"model": "py:json:decoder"}, "model", "not a callable"),
])
def test_bad_settings_name_their_field(values, field, words):
    with pytest.raises(ParamError) as err:
        VisionSpec(**values)
    assert err.value.field == field and words in str(err.value), err.value


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed here")
def test_torchvision_models_without_torchvision_say_how_to_install_it():
    with pytest.raises(ParamError) as err:
        VisionSpec(model="torchvision:resnet18")
    assert err.value.field == "model" and "pip install 'harness[vision]'" in str(err.value)


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed (pip install 'harness[vision]')")
@pytest.mark.parametrize("name, classes, size", [("resnet18", 10, 32), ("resnet50", 1000, 64)])
def test_builtin_resnets_are_torchvisions_bit_for_bit(name, classes, size):
    import torchvision

    from harness.workloads.vision.models import build_net

    torch.manual_seed(0)
    ours = build_net(name, classes, size)
    torch.manual_seed(0)
    theirs = torchvision.models.get_model(name, weights=None, num_classes=classes)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)  # same names, same init order
    x = torch.randn(2, 3, size, size)
    assert torch.equal(ours.eval()(x), theirs.eval()(x))


@pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision is not installed (pip install 'harness[vision]')")
def test_a_torchvision_vit_trains_and_checkpoints_its_encoder_layers(registry):
    spec = VisionSpec(model="torchvision:vit_b_16", batch=2, image_size=32, steps=2)
    assert len(build(spec).blocks()) == 12
    checks = case(registry, spec, [("activation_checkpointing", {})])
    assert all(c["passed"] for c in checks.values()), checks


USER_MODELS = """\
import torch
from torch import nn


def plain(num_classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))


class WithBlocks(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()) for _ in range(3)])
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))
"""


def test_a_users_factory_trains_and_names_its_blocks(tmp_path, monkeypatch, registry):
    (tmp_path / "user_vision_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    plain = build(VisionSpec(**{**TINY, "model": "py:user_vision_models:plain"}))
    assert [type(b).__name__ for b in plain.blocks()] == ["Conv2d", "Linear"]  # top-level children with parameters
    out = plain.outputs()
    assert out["first_batch_loss_after"] < out["losses"][0]
    spec = VisionSpec(**{**TINY, "model": "py:user_vision_models:WithBlocks"})
    assert len(build(spec).blocks()) == 3
    checks = case(registry, spec, [("activation_checkpointing", {})])
    assert all(c["passed"] for c in checks.values()), checks
    with pytest.raises(ParamError) as err:
        VisionSpec(model="py:user_vision_models:plain", norm="group")
    assert err.value.field == "norm"


@pytest.mark.parametrize("plugins, extra", [
    ([("mixed_precision", {"dtype": "bf16"})], {}),
    # lr 1e-4 (the vision default): at TINY's 1e-3 and one thread a near-zero gradient's round-off moves its
    # weight by 4.4e-4 after 3 AdamW steps, over gradient_accumulation's fixed atol of 1e-4 (a bound that does not
    # scale with lr yet: issue 26)
    ([("gradient_accumulation", {"micro_batches": 2})], {"norm": "group", "lr": 1e-4}),
    ([("activation_checkpointing", {})], {}),
    ([("channels_last", {})], {}),
    ([("optimizer_impl", {"impl": "for_loop"})], {}),
], ids=["mixed_precision", "gradient_accumulation", "activation_checkpointing", "channels_last", "optimizer_impl"])
def test_training_plugins_keep_their_invariants_on_vision(registry, plugins, extra):
    baseline = [("optimizer_impl", {"impl": "foreach"})] if plugins[0][0] == "optimizer_impl" else []
    checks = case(registry, VisionSpec(**{**TINY, **extra}), plugins, baseline)
    assert checks and all(c["passed"] for c in checks.values()), checks


def test_channels_last_under_bf16_against_bf16(registry):
    bf16 = ("mixed_precision", {"dtype": "bf16"})
    checks = case(registry, VisionSpec(**TINY), [bf16, ("channels_last", {})], [bf16])
    assert set(checks) == {"layout_in_effect", "first_loss_equal_nchw", "loss_close_to_nchw"}, checks
    assert all(c["passed"] for c in checks.values()), checks
    against_fp32 = case(registry, VisionSpec(**TINY), [bf16, ("channels_last", {})])
    assert not against_fp32["first_loss_equal_nchw"]["passed"]  # different precisions are not compared


def test_gradient_accumulation_fails_rightly_with_batchnorm(registry):
    """BatchNorm normalises each micro-batch by its own statistics: another training step, which the check sees."""
    checks = case(registry, VisionSpec(**TINY), [("gradient_accumulation", {"micro_batches": 2})])
    assert not checks["first_step_grads_equal"]["passed"] and not checks["params_equal_one_big_batch"]["passed"]


class ScaledLoss(ChannelsLast):
    """channels_last that also scales the loss by 1.01: every gradient 1 % larger."""

    def apply(self, run):
        super().apply(run)
        model = run.model

        class Scaled(torch.nn.Module):
            def forward(self, x, y):
                logits, loss = model(x, y)
                return logits, loss * 1.01

        run.model = Scaled()


class OtherWeights(ChannelsLast):
    """channels_last that re-initialises the weights (another seed) on the way."""

    def apply(self, run):
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            for p in run.raw_model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        super().apply(run)


class InputsOnly(ChannelsLast):
    """channels_last of the inputs alone: the weights stay NCHW."""

    def apply(self, run):
        run.batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in run.batches]
        run.facts["channels_last"] = {"conv_weights": 1, "channels_last_weights": 0, "inputs_channels_last": True}


@pytest.mark.parametrize("broken, fails", [(ScaledLoss, "first_loss_equal_nchw"), (OtherWeights, "grads_close_nchw"),
                                           (InputsOnly, "layout_in_effect")])
def test_a_broken_channels_last_fails_its_check(broken, fails):
    spec = VisionSpec(**TINY)
    baseline, opt = build(spec).outputs(), broken()
    checks = {c.name: c for c in opt.check(baseline, build(spec, [opt]).outputs())}
    assert not checks[fails].passed, checks


def test_set_memory_format_survives_sharding():
    run = build(VisionSpec(**TINY), [ChannelsLast()])
    run.shard_batches(0, 2)
    assert run.distributed and all(x.size(0) == 4 and x.is_contiguous(memory_format=torch.channels_last)
                                   for x, _ in run.batches)


SUITE = """\
name: v
device: cpu
workloads:
  img: {type: vision, model: resnet_tiny, batch: 4, image_size: 16}
  lm: {type: train, model: nano, batch: 4, seq_len: 32}
cases:
  - workload: WORKLOAD
    plugins: [PLUGIN]
"""


def validate(tmp_path, text: str, *plugins_dirs) -> tuple[object, str]:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    dirs = [a for d in plugins_dirs for a in ("--plugins-dir", d)]
    return harness_cli(*dirs, "validate", path), f"{path}:"


@pytest.mark.parametrize("workload, plugin, words", [
    ("img", "kv_cache", "'kv_cache' applies to GenerateAPI runs, but 'img' (type: vision) runs VisionRun, which lacks"),
    ("lm", "channels_last", "'channels_last' applies to VisionAPI runs, but 'lm' (type: train) runs TrainRun, which "
                            "lacks image_size, memory_format, set_memory_format()"),
], ids=["kv_cache-on-vision", "channels_last-on-train"])
def test_optimizations_for_other_interfaces_are_refused_at_validate(tmp_path, workload, plugin, words):
    proc, where = validate(tmp_path, SUITE.replace("WORKLOAD", workload).replace("PLUGIN", plugin))
    assert proc.returncode == 2 and f"{where}8: cases[0].plugins[0].{plugin}:" in proc.stderr, proc.stderr
    assert words in proc.stderr, proc.stderr


def test_channels_last_after_torch_compile_is_refused_at_validate(tmp_path):
    text = SUITE.replace("WORKLOAD", "img").replace("PLUGIN", "torch_compile, channels_last")
    proc, where = validate(tmp_path, text)
    assert proc.returncode == 2 and f"{where}8: cases[0].plugins[1].channels_last:" in proc.stderr, proc.stderr
    assert "list it before torch_compile" in proc.stderr, proc.stderr


def test_lora_with_its_lm_targets_is_refused_on_vision(tmp_path):
    """LoRA requires LMTrainAPI (a language model's logits and token batches): an image classifier has none,
    and its `fc` head must not silently get an adapter."""
    proc, where = validate(tmp_path, SUITE.replace("WORKLOAD", "img").replace("PLUGIN", "lora"))
    assert proc.returncode == 2 and f"{where}8:" in proc.stderr, proc.stderr
    assert "'lora' applies to LMTrainAPI runs, but 'img' (type: vision) runs VisionRun, which lacks args" \
        in proc.stderr, proc.stderr


@pytest.mark.parametrize("plugin", ["mixed_precision", "gradient_accumulation", "activation_checkpointing"])
def test_a_toy_classifier_without_trainapi_is_refused_at_validate(tmp_path, plugin):
    text = "name: toy\ndevice: cpu\nworkloads:\n  toy: {type: toy_plain}\ncases:\n" \
           f"  - workload: toy\n    plugins: [{plugin}]\n"
    proc, where = validate(tmp_path, text, TOY)
    assert proc.returncode == 2 and f"{where}7: cases[0].plugins[0].{plugin}:" in proc.stderr, proc.stderr
    lacks = ", ".join([m for m in interface_members(TrainAPI)[0] if m not in ("ctx", "info")][:5])  # Run has those
    assert f"applies to TrainAPI runs, but 'toy' (type: toy_plain) runs PlainRun, which lacks {lacks} ..." \
        in proc.stderr, proc.stderr


def test_a_toy_classifier_on_trainloop_gets_training_plugins_unchanged(tmp_path):
    suite = tmp_path / "toy.yaml"
    suite.write_text(textwrap.dedent("""\
        name: toy
        device: cpu
        threads: 1
        measure: {repeat: 1, min_pairs: 3, min_samples: 3, min_time_s: 0.05, max_time_s: 1, warmup_min_s: 0.02,
                  warmup_max_s: 0.2}
        workloads:
          mlp: {type: toy_mlp}
        cases:
          - workload: mlp
            plugins: [{mixed_precision: {dtype: bf16}}]
          - workload: mlp
            plugins: [{gradient_accumulation: {micro_batches: 2}}]
        """))
    out = tmp_path / "run"
    proc = harness_cli("--plugins-dir", TOY, "run", suite, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = {c["id"]: c for c in json.loads((out / "results.json").read_text())["cases"]}
    assert list(cases) == ["mlp/mixed_precision", "mlp/gradient_accumulation(micro_batches=2)"]
    for c in cases.values():
        assert c["status"] == "ok" and c["checks"] and all(ch["passed"] for ch in c["checks"]), c["checks"]
    names = {ch["name"] for c in cases.values() for ch in c["checks"]}
    assert {"loss_close_to_fp32", "params_equal_one_big_batch", "first_step_grads_equal"} <= names
