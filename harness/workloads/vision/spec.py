"""`VisionSpec`: the settings of a `vision` case (an image classifier trained on seeded synthetic images)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harness.api import ParamError
from harness.workloads.vision.models import RESNETS, TORCHVISION_HINT, torchvision_models, user_factory

MIN_IMAGE, MAX_IMAGE = 16, 1024  # the built-in ResNets downsample 32x; 16 still leaves layer4 a 1 x 1 map


@dataclass
class VisionSpec:
    """Settings of an image-classification training case."""

    model: str = field(default="resnet18", metadata={
        "help": f"built-in ({', '.join(RESNETS)}: torchvision's architecture, random init, no torchvision "
                "needed), torchvision:NAME (torchvision.models.get_model, no weights; "
                f"{TORCHVISION_HINT}) or py:package.module:factory (factory(num_classes=N) -> an nn.Module "
                "mapping [B, 3, H, W] images to [B, N] logits)"})
    batch: int = field(default=16, metadata={"help": "global batch (images per step, summed over ranks)"})
    image_size: int = field(default=32, metadata={"help": f"H = W of the square RGB images ({MIN_IMAGE}..{MAX_IMAGE})"})
    classes: int = field(default=10, metadata={"help": "number of classes (>= 2)"})
    steps: int = field(default=3, metadata={"help": "K: steps of the correctness pass (distinct fixed batches)"})
    lr: float = field(default=1e-4, metadata={
        "help": "AdamW learning rate; 1e-4 lowers a ResNet's loss within 3 steps while keeping the sides of a "
                "case on one trajectory (at 1e-3 AdamW's ~lr x sign(g) first steps turn round-off into "
                "visibly different losses after K steps)"})
    tf32: bool = field(default=False, metadata={"help": "allow TF32 matmuls and convolutions in the fp32 parts "
                                                        "(CUDA only)"})
    norm: Literal["batch", "group"] = field(default="batch", metadata={
        "help": "built-in ResNets' normalisation: batch (torchvision's BatchNorm2d: batch statistics, so "
                "micro-batches or DDP shards normalise differently) or group (GroupNorm: per sample)"})
    data: Literal["synthetic"] = field(default="synthetic", metadata={
        "help": "images: seeded class patterns plus noise (harness.workloads.vision.data), learnable in a few steps"})

    def __post_init__(self):
        if self.batch < 1:
            raise ParamError("batch", f"batch must be >= 1 (got {self.batch})")
        if not MIN_IMAGE <= self.image_size <= MAX_IMAGE:
            raise ParamError("image_size", f"image_size must be in {MIN_IMAGE}..{MAX_IMAGE} (got {self.image_size}): "
                                           "the ResNets downsample 32x")
        if self.classes < 2:
            raise ParamError("classes", f"classes must be >= 2 (got {self.classes})")
        if self.steps < 1:
            raise ParamError("steps", f"steps must be >= 1 (got {self.steps})")
        if not self.lr > 0:
            raise ParamError("lr", f"lr must be > 0 (got {self.lr})")
        check_model(self.model)
        if self.norm != "batch" and self.model not in RESNETS:
            raise ParamError("norm", f"norm applies to the built-in ResNets ({', '.join(RESNETS)}); "
                                     f"'{self.model}' brings its own")


def check_model(model: str) -> None:
    """ParamError("model", ...) unless `model` names a classifier this machine can build."""
    if model in RESNETS:
        return
    if model.startswith("torchvision:"):
        name = model.removeprefix("torchvision:")
        try:
            known = torchvision_models().list_models()
        except ImportError as exc:
            raise ParamError("model", f"model '{model}' needs torchvision: {exc}") from None
        if name not in known:
            raise ParamError("model", f"torchvision has no model '{name}' (torchvision.models.list_models())")
        return
    if model.startswith("py:"):
        try:
            user_factory(model.removeprefix("py:"))
        except Exception as exc:  # a user's module may raise anything at import
            raise ParamError("model", f"cannot load the factory of '{model}': {type(exc).__name__}: {exc}") from None
        return
    raise ParamError("model", f"unknown model '{model}': a built-in ({', '.join(RESNETS)}), torchvision:NAME or "
                              "py:package.module:factory")
