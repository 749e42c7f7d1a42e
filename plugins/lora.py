"""LoRA (Hu et al. 2021): freeze the model, train a low-rank update B A of chosen linear layers.

On an hf: model the adapters come from peft (`get_peft_model` with a `LoraConfig`), the library people fine-tune
with; its target modules default to peft's choice for the architecture (GPT-2: c_attn; Llama: q_proj, v_proj) and
`targets` overrides them (module names, or ["all-linear"]). On the built-in GPT:

`LoRALinear` is torchtune's shape in plain PyTorch: the frozen base weight and bias keep their names (so the
checks compare them by name with the full fine-tuning baseline), `lora_a` [r, in] starts kaiming-uniform,
`lora_b` [out, r] starts at zero, and the output is ``x W^T + b + (alpha / r) * dropout(x) A^T B^T``. Only the
adapters go to the optimizer, so gradients and AdamW states shrink to the trainable fraction.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.api import Check, LMTrainAPI, Optimization, ParamError, hookimpl
from harness.models.reference import model_source

TARGETS = ("qkv", "proj", "fc", "lm_head")  # attention qkv, attention and MLP output projections, MLP up, head
DEFAULT_TARGETS = ["qkv", "proj", "fc"]


@dataclass
class LoRAParams:
    """Parameters of lora."""

    rank: int = field(default=8, metadata={"help": "r: rank of the update B A"})
    alpha: float = field(default=16.0, metadata={"help": "scale of the update is alpha / rank"})
    targets: list[str] | None = field(
        default=None,
        metadata={"help": f"linear layers that get an adapter; built-in GPT: {', '.join(TARGETS)} (default qkv, "
                          "proj, fc); hf: model: module names or all-linear (default: peft's for the architecture)"},
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapter's input (0 = deterministic)"})

    def __post_init__(self):
        if self.rank < 1:
            raise ParamError("rank", f"rank must be >= 1 (got {self.rank})")
        if not self.alpha > 0:
            raise ParamError("alpha", f"alpha must be > 0 (got {self.alpha})")
        if self.targets is not None and not self.targets:
            raise ParamError("targets", "targets must be a non-empty list (or left out for the default)")
        if not 0 <= self.dropout < 1:
            raise ParamError("dropout", f"dropout must be in [0, 1) (got {self.dropout})")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: y = x W^T + b + (alpha / r) (x A^T) B^T."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: names and values unchanged
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.lora_a = nn.Linear(base.in_features, rank, bias=False)  # A: [r, in]
        self.lora_b = nn.Linear(rank, base.out_features, bias=False)  # B: [out, r]
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))  # on the CPU generator, then moved
        nn.init.zeros_(self.lora_b.weight)  # B = 0: the adapted model starts as the base model
        self.to(base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, in] -> [B, T, out]
        return F.linear(x, self.weight, self.bias) + self.scale * self.lora_b(self.lora_a(self.dropout(x)))


def digest(t: torch.Tensor) -> str:
    """A hash of the tensor's bytes: equal digests mean bitwise-equal values (a CPU fp32 copy is hashed)."""
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def add_adapters(model: nn.Module, params: LoRAParams, generator_seed: int) -> list[str]:
    """Replace each targeted `nn.Linear` of `model` by a LoRALinear (peft's LoRA layers on an hf: model); returns
    the adapted modules' names."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)  # A's init fixed by the seed; the run's RNG state is restored after
        if hasattr(model, "hf"):
            return add_peft_adapters(model, params)
        replaced, targets = [], params.targets or DEFAULT_TARGETS
        for name, module in list(model.named_modules()):
            for attr, child in list(module.named_children()):
                if isinstance(child, nn.Linear) and attr in targets:
                    setattr(module, attr, LoRALinear(child, params.rank, params.alpha, params.dropout))
                    replaced.append(f"{name}.{attr}" if name else attr)
    return replaced


def add_peft_adapters(model: nn.Module, params: LoRAParams) -> list[str]:
    """Wrap an `HFCausalLM`'s transformers model with peft's `get_peft_model` (base frozen, lora_B = 0)."""
    from peft import LoraConfig, get_peft_model

    targets = params.targets
    config = LoraConfig(task_type="CAUSAL_LM", r=params.rank, lora_alpha=params.alpha, lora_dropout=params.dropout,
                        bias="none", target_modules=targets[0] if targets == ["all-linear"] else targets)
    with warnings.catch_warnings():  # peft sets fan_in_fan_out for GPT-2's Conv1D itself, and says so
        warnings.filterwarnings("ignore", message=".*(fan_in_fan_out|is_gradient_checkpointing).*")
        model.hf = get_peft_model(model.hf, config)
    return [n.removesuffix(".lora_A") for n, _ in model.hf.named_modules() if n.endswith(".lora_A")]


def base_name(name: str) -> str:
    """A parameter's name in the plain model: peft's wrapper prefix and `.base_layer` taken out."""
    return name.replace("base_model.model.", "", 1).replace(".base_layer.", ".")


def peft_reason(model: str, targets: list[str] | None) -> str | None:
    """Why lora cannot run on hf: folder `model` (peft missing, no default targets for its architecture, a
    target that names no module), or None. Read from the config on the meta device: no weights loaded."""
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS
    except ImportError:
        return "lora on an hf: model uses peft: pip install 'harness[hf]'"
    from harness.models.hf import meta_model

    hf = meta_model(model_source(model)[1])
    if targets is None:
        if hf.config.model_type not in DEFAULTS:
            return (f"peft has no default target modules for model type '{hf.config.model_type}': "
                    "give lora's targets (module names, or [all-linear])")
        return None
    names = {n.rsplit(".", 1)[-1] for n, m in hf.named_modules() if n}
    missing = [t for t in targets if t != "all-linear" and t not in names]
    if missing:
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in hf.named_modules()
                          if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"})
        return f"targets {missing} name no module of {type(hf).__name__}; its linear layers: {', '.join(linears)}"
    return None


class LoRA(Optimization):
    """LoRA fine-tuning: adapters on the targeted linears, every other parameter frozen."""

    name = "lora"
    before = ("ddp", "zero", "torch_compile")  # they wrap the model lora changes
    requires = LMTrainAPI  # adapters on a language model's linears; its checks read logits
    description = "Low-rank adapters (frozen base); starts equal to the base model, base weights never change."
    Params = LoRAParams

    def validate(self, spec: Any, plugins: list) -> None:
        if model_source(spec.model)[0] == "hf":
            reason = peft_reason(spec.model, self.params.targets)
            if reason:
                raise ParamError("targets", reason)
        elif self.params.targets is not None and not set(self.params.targets) <= set(TARGETS):
            raise ParamError("targets", f"targets of the built-in GPT are among {', '.join(TARGETS)} "
                                        f"(got {self.params.targets})")

    def apply(self, run: LMTrainAPI) -> None:  # `before` put it ahead of what wraps the model
        model = run.raw_model
        probe = run.batches[0][0][:1]  # the first sequence of the first batch: [1, T]
        with torch.no_grad():
            before = model(probe)
        for p in model.parameters():
            p.requires_grad_(False)
        replaced = add_adapters(model, self.params, run.ctx.seed + 2)
        with torch.no_grad():
            after = model(probe)
        trainable = [p for p in model.parameters() if p.requires_grad]
        run.optimizer = run.make_optimizer(trainable)
        n_train, n_all = sum(p.numel() for p in trainable), model.num_params()
        run.facts["lora"] = {
            "step0_logits_equal": torch.equal(before, after),
            "step0_logits_max_abs_diff": (after - before).abs().max().item(),
            "initial_digests": {n: digest(p) for n, p in model.named_parameters()},
            "trainable_params": n_train,
            "trainable_tensors": len(trainable),
        }
        targets = sorted({n.rsplit(".", 1)[-1] for n in replaced})
        run.info.update(
            {
                "lora": f"rank {self.params.rank}, alpha {self.params.alpha:g} on {len(replaced)} linears "
                f"({', '.join(targets)}{', peft' if hasattr(model, 'hf') else ''})",
                "trainable_params": n_train,
                "trainable_fraction": n_train / n_all,
            }
        )

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        facts = optimized["facts"]["lora"]
        checks = [
            Check(
                "step0_logits_equal_base",
                facts["step0_logits_equal"],
                {"max_abs_diff": facts["step0_logits_max_abs_diff"]},
                "bitwise (B = 0)",
            )
        ]
        initial, params = facts["initial_digests"], optimized["params"]
        base = [n for n in params if ".lora_" not in n]
        adapters = [n for n in params if ".lora_" in n]
        changed = [n for n in base if digest(params[n]) != initial[n]]
        missing = sorted(set(baseline["params"]) - {base_name(n) for n in base})
        checks.append(
            Check(
                "base_weights_unchanged",
                not changed and not missing,
                {"base_tensors": len(base), "changed": changed[:5], "missing": missing[:5]},
                "bitwise",
            )
        )
        unchanged = [n for n in adapters if digest(params[n]) == initial[n]]
        checks.append(
            Check(
                "adapters_trained",
                bool(adapters) and not unchanged,
                {"adapter_tensors": len(adapters), "unchanged": unchanged[:5]},
                "every adapter tensor differs from its initial value",
            )
        )
        before, after = optimized["losses"][0], optimized["first_batch_loss_after"]
        checks.append(
            Check(
                "loss_decreases",
                after < before,
                {
                    "first_batch_before": before,
                    "first_batch_after": after,
                    "steps": len(optimized["losses"]),
                    "baseline_after": baseline.get("first_batch_loss_after"),
                },
                "loss on the first batch after K steps < before the first step",
            )
        )
        b, o = baseline["memory"]["optimizer_states"], optimized["memory"]["optimizer_states"]
        bound = 8 * facts["trainable_params"] + 4 * facts["trainable_tensors"]  # exp_avg, exp_avg_sq, step
        checks.append(
            Check(
                "optimizer_states_only_for_adapters",
                o <= bound,
                {"baseline": b, "optimized": o, "ratio": o / b if b else None, "bound": bound},
                "fp32 AdamW bytes of the trainable parameters at most (8 per value + 4 per tensor)",
            )
        )
        return checks


@hookimpl
def register_optimizations(register):
    register(LoRA)
