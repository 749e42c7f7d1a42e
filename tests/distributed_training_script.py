"""Run under `torchrun --nproc-per-node 2`: build the training runs as the worker does and check invariants.

Rank 0 builds the single-process baseline alone (as the worker does for a run with `distributed = False`);
every rank builds the ddp / zero runs. Rank 0 writes {case: [checks...]} as JSON to argv[1].
"""

import json
import sys

import torch
import torch.distributed as dist
from harness_plugins.ddp import DDP, WorldParams
from harness_plugins.zero import Zero, ZeroParams

from harness.core.workload import RunContext
from harness.workloads.train import TrainSpec, TrainWorkload


def main(path: str) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = RunContext(device=torch.device("cpu"), env={"device": "cpu", "peak": None}, seed=0, rank=rank,
                     world_size=world)
    workload, spec = TrainWorkload(), TrainSpec(model="nano", batch=4, seq_len=32, steps=3)
    single = workload.build(spec, [], ctx).outputs() if rank == 0 else None
    dist.barrier()
    ddp = DDP(WorldParams(world))
    ddp_run = workload.build(spec, [ddp], ctx)
    ddp_out = ddp_run.outputs()
    results = {}
    if rank == 0:
        results["ddp"] = [c.as_dict() for c in ddp.check(single, ddp_out)]
        results["ddp_info"] = {"distributed": ddp_run.distributed, "local_batch": ddp_run.info["local_batch"],
                               "units": ddp_run.units, "extra": ddp_run.extra_metrics(0.1)}
    # A deliberately wrong variant: DDP trained with another learning rate must fail the same check.
    wrong = workload.build(TrainSpec(model="nano", batch=4, seq_len=32, steps=3, lr=2e-3), [DDP(WorldParams(world))],
                           ctx).outputs()
    if rank == 0:
        results["ddp_wrong_lr"] = [c.as_dict() for c in ddp.check(single, wrong)]
    for stage in ("zero1", "fsdp_grad_op", "fsdp_full"):
        zero = Zero(ZeroParams(stage=stage, world_size=world))
        out = workload.build(spec, [zero], ctx).outputs()
        if rank == 0:
            results[stage] = [c.as_dict() for c in zero.check(ddp_out, out)]
    if rank == 0:
        with open(path, "w") as f:
            json.dump(results, f, default=str)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
