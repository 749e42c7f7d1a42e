"""Seeded synthetic images the `vision` workload trains on: learnable, so a few steps really lower the loss.

Each class is a fixed random low-frequency pattern (a 4 x 4 x 3 grid of N(0, 1) values, bilinearly upsampled
to the image size); an image is its class's pattern plus N(0, 1) pixel noise. A classifier must find the
pattern under the noise, which a ResNet starts doing within a few AdamW steps, while no two images are equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GRID = 4  # the patterns' resolution before upsampling: low frequency, so downsampling convs keep them
NOISE = 1.0  # pixel noise std; the patterns have std ~1 too


def class_patterns(classes: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """[classes, 3, size, size]: one smooth random pattern per class."""
    grid = torch.randn(classes, 3, GRID, GRID, generator=generator)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)


def image_batches(steps: int, batch: int, size: int, classes: int,
                  seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` distinct fixed batches [(images [B, 3, size, size] float32, labels [B] int64)] on the CPU, from
    `seed` alone (a generator of its own: the run's global RNG is not touched)."""
    g = torch.Generator().manual_seed(seed)
    patterns = class_patterns(classes, size, g)
    out = []
    for _ in range(steps):
        labels = torch.randint(classes, (batch,), generator=g)
        images = patterns[labels] + NOISE * torch.randn(batch, 3, size, size, generator=g)
        out.append((images, labels))
    return out
