"""DDP: each rank trains on its slice of the global batch; gradients are averaged by a bucketed all-reduce."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from harness.api import Check, Optimization, ParamError, TrainAPI, hookimpl
from harness.core.checks import loss_check, noise_of, tensors_check

# The ranks' gradient average is summed in a different order than the single-process mean, so parameters
# differ by fp32 round-off, which AdamW's normalisation can amplify near zero gradients. Measured on nano
# (K=3, 2 gloo ranks): max |diff| 2.4e-6 (a bias); the same run with lr 2e-3 instead of 1e-3: 6e-3.
PARAM_RTOL, PARAM_ATOL = 1e-4, 1e-5
LOSS_ATOL = 1e-4


@dataclass
class WorldParams:
    """Parameters of a data-parallel optimization."""

    world_size: int = field(default=2, metadata={"help": "processes (ranks), each on its slice of the batch"})

    def __post_init__(self):
        if self.world_size < 1:
            raise ParamError("world_size", f"world_size must be >= 1 (got {self.world_size})")


def backend_reason(env: dict[str, Any]) -> str | None:
    """None if the process-group backend for this device (gloo on CPU, NCCL on CUDA) is available."""
    if not dist.is_available():
        return "torch.distributed is not available in this PyTorch build"
    if str(env.get("device", "cpu")).startswith("cuda"):
        return None if dist.is_nccl_available() else "NCCL is not available in this PyTorch build"
    return None if dist.is_gloo_available() else "gloo is not available in this PyTorch build"


def check_batch_splits(batch: int, world_size: int) -> None:
    """ParamError("world_size") unless the global batch splits evenly over the ranks (each rank takes a slice)."""
    if batch % world_size:
        raise ParamError("world_size", f"the global batch of {batch} does not split over {world_size} ranks; "
                                       "make batch a multiple of world_size")


def join_group(run: Any, world_size: int) -> tuple[int, int]:
    """This process's (rank, world size) in the process group, checked against `world_size`.

    The worker starts torchrun and the group for world_size > 1; for world_size 1 (overhead of the wrapper
    alone) a one-rank group on an in-memory store is made here when none exists.
    """
    if not dist.is_initialized():
        if world_size != 1:
            raise RuntimeError(f"world_size {world_size} needs an initialized process group: run the case "
                               "through the harness worker (it launches torchrun)")
        backend = "nccl" if run.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank, world = dist.get_rank(), dist.get_world_size()
    if world != world_size:
        raise RuntimeError(f"world_size is {world_size} but the process group has {world} ranks")
    return rank, world


def wrap_ddp(run: Any, world_size: int) -> None:
    """Take this rank's slice of the batch and wrap the model in DistributedDataParallel."""
    rank, world = join_group(run, world_size)
    run.shard_batches(rank, world)
    device_ids = [run.device.index if run.device.index is not None else torch.cuda.current_device()] \
        if run.device.type == "cuda" else None
    run.model = DistributedDataParallel(run.model, device_ids=device_ids)
    run.info.update({"world_size": world, "backend": dist.get_backend()})


class DDP(Optimization):
    """DistributedDataParallel over `world_size` processes (Li et al. 2020); same global batch as baseline."""

    name = "ddp"
    requires = TrainAPI
    description = "DistributedDataParallel (gloo on CPU, NCCL on CUDA); parameters equal one process's run."
    Params = WorldParams

    def processes(self) -> int:
        return self.params.world_size

    def validate(self, spec: Any, plugins: list) -> None:
        if isinstance(getattr(spec, "batch", None), int):  # else shard_batches checks the run's global batch
            check_batch_splits(spec.batch, self.params.world_size)

    def supports(self, env: dict[str, Any]) -> str | None:
        return backend_reason(env)

    def apply(self, run: TrainAPI) -> None:
        wrap_ddp(run, self.params.world_size)

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        return [tensors_check("params_equal_single_process", baseline["params"], optimized["params"],
                              PARAM_RTOL, PARAM_ATOL, noise=noise_of(baseline, "params")),
                loss_check("loss_equal_single_process", baseline, optimized, LOSS_ATOL)]


@hookimpl
def register_optimizations(register):
    register(DDP)
