"""Rank, world size and the few collectives the worker needs, around torch.distributed; a no-op outside torchrun."""

from __future__ import annotations

import os


class Distributed:
    """Rank, world size and the collectives the worker needs; a no-op outside torchrun."""

    def __init__(self, device: str):
        import torch
        import torch.distributed as dist

        self.torch, self.dist = torch, dist
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.active = self.world_size > 1 or "RANK" in os.environ
        if self.active and not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            dist.init_process_group(backend)

    def max(self, value: float) -> float:
        if not self.active:
            return value
        # NCCL reduces CUDA tensors only ("Tensors must be CUDA and dense"): this rank's device there
        device = f"cuda:{self.torch.cuda.current_device()}" if self.dist.get_backend() == "nccl" else "cpu"
        t = self.torch.tensor([value], dtype=self.torch.float64, device=device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return float(t.item())

    def barrier(self) -> None:
        if self.active:
            self.dist.barrier()

    def close(self) -> None:
        if self.active and self.dist.is_initialized():
            self.dist.destroy_process_group()
