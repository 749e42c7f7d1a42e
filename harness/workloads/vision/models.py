"""Image classifiers for the `vision` workload: built-in ResNets, torchvision's models, a user's factory.

The built-in ResNets are torchvision's architecture (He et al. 2015, v1.5: the stride in the 3x3 conv of a
Bottleneck) written out compactly, so the workload needs no torchvision: conv1 7x7 stride 2, maxpool, layer1..4
of BasicBlocks / Bottlenecks, global average pool, fc. `Classifier` wraps any of them so that
`forward(images, labels)` returns `(logits, loss)`, the contract of `harness.api.TrainLoop`.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# name -> (block, blocks per stage, stage widths); resnet_tiny is for fast tests: 1 block of 8..64 channels each
RESNETS = {"resnet18": ("basic", (2, 2, 2, 2), (64, 128, 256, 512)),
           "resnet34": ("basic", (3, 4, 6, 3), (64, 128, 256, 512)),
           "resnet50": ("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512)),
           "resnet_tiny": ("basic", (1, 1, 1, 1), (8, 16, 32, 64))}
TORCHVISION_HINT = "pip install 'harness[vision]'"


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """BatchNorm2d (torchvision's), or GroupNorm of up to 32 groups (Wu & He 2018: per-sample statistics, so a
    micro-batch normalises exactly as the whole batch does)."""
    return nn.BatchNorm2d if kind == "batch" else lambda c: nn.GroupNorm(math.gcd(32, c), c)


def conv(cin: int, cout: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs and a residual (ResNet-18/34)."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, width, 3, stride), norm(width)
        self.conv2, self.bn2 = conv(width, width, 3), norm(width)
        self.downsample = shortcut(cin, width, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class Bottleneck(nn.Module):
    """1x1 down, 3x3 (with the stride), 1x1 up to 4 x width, and a residual (ResNet-50)."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, width, 1), norm(width)
        self.conv2, self.bn2 = conv(width, width, 3, stride), norm(width)
        self.conv3, self.bn3 = conv(width, width * 4, 1), norm(width * 4)
        self.downsample = shortcut(cin, width * 4, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.downsample(x))


def shortcut(cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]) -> nn.Module:
    """The identity, or a strided 1x1 conv + norm where the shape changes (torchvision's `downsample`)."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(conv(cin, cout, 1, stride), norm(cout))


class ResNet(nn.Module):
    """torchvision's ResNet: stem, four stages (the first keeps the resolution, each next halves it), pool, fc."""

    def __init__(self, block: str, layers: tuple[int, ...], widths: tuple[int, ...], num_classes: int,
                 norm: str = "batch"):
        super().__init__()
        Block, make_norm = (BasicBlock if block == "basic" else Bottleneck), norm_layer(norm)
        self.conv1, self.bn1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), make_norm(widths[0])
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for i, (n, width) in enumerate(zip(layers, widths)):
            stage = []
            for j in range(n):
                stage.append(Block(cin, width, 2 if i > 0 and j == 0 else 1, make_norm))
                cin = width * Block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # torchvision's init; Linear keeps PyTorch's default
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, 3, H, W] -> logits [B, classes]
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Classifier(nn.Module):
    """An image classifier with its loss: `forward(images [B, 3, H, W], labels [B])` -> (logits, cross-entropy)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(images)
        return logits, F.cross_entropy(logits.float(), labels)


def user_factory(path: str) -> Callable[..., nn.Module]:
    """The callable named by `package.module:factory`; ImportError / AttributeError / TypeError if it is not one."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ImportError(f"'{path}' is not package.module:factory")
    factory = getattr(importlib.import_module(module_name), attr)
    if not callable(factory):
        raise TypeError(f"'{path}' is a {type(factory).__name__}, not a callable")
    return factory


def torchvision_models():
    """torchvision.models, or ImportError saying how to install it (any failure to import it counts: a torchvision
    built for another torch raises at import)."""
    try:
        import torchvision.models
    except Exception as exc:
        raise ImportError(f"torchvision is not importable here ({type(exc).__name__}: {exc}); "
                          f"{TORCHVISION_HINT}") from None
    return torchvision.models


def build_net(model: str, classes: int, image_size: int, norm: str = "batch") -> nn.Module:
    """The bare classifier (images -> logits), randomly initialised from the current seed, on the current
    default device: a built-in ResNet, `torchvision:NAME` (no weights) or `py:package.module:factory`, called
    as `factory(num_classes=classes)`."""
    if model in RESNETS:
        return ResNet(*RESNETS[model], num_classes=classes, norm=norm)
    if model.startswith("torchvision:"):
        name = model.removeprefix("torchvision:")
        extra = {"image_size": image_size} if name.startswith("vit_") else {}  # ViT builds its position table
        return torchvision_models().get_model(name, weights=None, num_classes=classes, **extra)
    return user_factory(model.removeprefix("py:"))(num_classes=classes)


def find_blocks(net: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a classifier: its `blocks` attribute if it has one; a ResNet's residual blocks
    (layer1..4); a torchvision ViT's encoder layers; else its top-level children that have parameters."""
    if hasattr(net, "blocks"):
        return list(net.blocks)
    if all(hasattr(net, f"layer{i}") for i in range(1, 5)):
        return [b for i in range(1, 5) for b in getattr(net, f"layer{i}")]
    layers = getattr(getattr(net, "encoder", None), "layers", None)
    if isinstance(layers, nn.Module):
        return list(layers)
    return [m for m in net.children() if next(m.parameters(), None) is not None]
