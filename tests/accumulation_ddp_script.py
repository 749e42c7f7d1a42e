"""Run under `torchrun --nproc-per-node 2`: gradient accumulation inside DDP against one process's big batch.

Rank 0 builds the single-process baseline alone; both ranks build ddp + gradient_accumulation (k = 2) and
count DDP's gradient all-reduces with a comm hook over one step (no_sync must leave one per bucket and step).
Rank 0 writes {"checks": [...], "buckets_per_step": {k: n}} as JSON to argv[1].
"""

import json
import sys

import torch
import torch.distributed as dist
from harness_plugins.ddp import DDP, WorldParams
from harness_plugins.gradient_accumulation import AccumulationParams, GradientAccumulation
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from harness.core.workload import RunContext
from harness.workloads.train import TrainSpec, TrainWorkload


def all_reduces_per_step(workload, spec, ctx, k: int) -> int:
    """Gradient buckets all-reduced during one training step of ddp + accumulation over k micro-batches."""
    run = workload.build(spec, [DDP(WorldParams(2)), GradientAccumulation(AccumulationParams(k))], ctx)
    calls = []

    def counting(state, bucket):
        calls.append(bucket.index())
        return allreduce_hook(state, bucket)

    run.model.register_comm_hook(dist.group.WORLD, counting)
    run.step()
    return len(calls)


def main(path: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = RunContext(
        device=torch.device("cpu"), env={"device": "cpu", "peak": None}, seed=0, rank=rank, world_size=world
    )
    workload, spec = TrainWorkload(), TrainSpec(model="nano", batch=4, seq_len=32, steps=3)
    single = workload.build(spec, [], ctx).outputs() if rank == 0 else None
    dist.barrier()
    accumulation = GradientAccumulation(AccumulationParams(2))
    out = workload.build(spec, [DDP(WorldParams(world)), accumulation], ctx).outputs()
    buckets = {k: all_reduces_per_step(workload, spec, ctx, k) for k in (1, 2)}
    if rank == 0:
        checks = [c.as_dict() for c in accumulation.check(single, out)]
        with open(path, "w") as f:
            json.dump({"checks": checks, "buckets_per_step": buckets}, f, default=str)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
