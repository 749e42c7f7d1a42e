"""The device's one synchronization point: every timer and every synchronized measurement waits through `sync`."""

from __future__ import annotations

from typing import Any


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU. `device`: a torch.device or a name."""
    if str(getattr(device, "type", device)).startswith("cuda"):
        import torch  # here: the report imports core modules without torch

        torch.cuda.synchronize(device)
