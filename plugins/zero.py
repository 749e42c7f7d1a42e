"""ZeRO: shard optimizer states (ZeroRedundancyOptimizer, stage 1) or also gradients and weights (FSDP2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from harness_plugins.ddp import PARAM_ATOL, PARAM_RTOL, backend_reason, check_batch_splits, join_group, wrap_ddp
from torch.nn.parallel import DistributedDataParallel

from harness.api import Check, Optimization, ParamError, TrainAPI, hookimpl
from harness.core.checks import noise_of, tensors_check

# ZeroRedundancyOptimizer gives whole parameters to ranks (greedy by size), so a rank's share of the Adam
# states is 8 Psi / N only up to the largest tensor; FSDP2 shards every tensor on dim 0 (exact up to padding).
STATE_RTOL = {"zero1": 0.25, "fsdp_grad_op": 0.02, "fsdp_full": 0.02}


@dataclass
class ZeroParams:
    """Parameters of zero."""

    stage: Literal["zero1", "fsdp_grad_op", "fsdp_full"] = field(
        default="zero1", metadata={"help": "zero1: ZeroRedundancyOptimizer + DDP (optimizer states sharded); "
                                           "fsdp_grad_op: FSDP2 without resharding after forward (~ZeRO-2, "
                                           "SHARD_GRAD_OP); fsdp_full: FSDP2 FULL_SHARD (~ZeRO-3)"})
    world_size: int = field(default=2, metadata={"help": "ranks; 1 runs the wrappers unsharded (overhead only)"})

    def __post_init__(self):
        if self.world_size < 1:
            raise ParamError("world_size", f"world_size must be >= 1 (got {self.world_size})")


def fsdp_available() -> str | None:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (FSDP2)
    except ImportError:
        return "FSDP2 (torch.distributed.fsdp.fully_shard) is not in this PyTorch"
    return None


class Zero(Optimization):
    """ZeRO stage 1 (ZeroRedundancyOptimizer) or FSDP2 (~stages 2 and 3) (Rajbhandari et al. 2020).

    With world_size 1 nothing is sharded: the per-rank formula gives the full 16 bytes/param and the case
    measures the wrapper's overhead alone (the single-GPU suite does this).
    """

    name = "zero"
    requires = TrainAPI
    description = "ZeroRedundancyOptimizer / FSDP2 sharding; params equal DDP, per-rank bytes match ZeRO formula."
    Params = ZeroParams

    def processes(self) -> int:
        return self.params.world_size

    def supports(self, env: dict[str, Any]) -> str | None:
        reason = backend_reason(env)
        if reason is None and self.params.stage != "zero1":
            reason = fsdp_available()
        return reason

    def validate(self, spec: Any, plugins: list) -> None:
        if isinstance(getattr(spec, "batch", None), int):  # else shard_batches checks the run's global batch
            check_batch_splits(spec.batch, self.params.world_size)
        if self.params.stage != "zero1" and any(o.name == "ddp" for o in plugins):
            raise ParamError("", f"zero stage {self.params.stage} shards with FSDP, which replaces DDP: do not "
                                 "apply ddp to the same side (use ddp as the baseline only)")

    def apply(self, run: TrainAPI) -> None:
        stage = self.params.stage
        if stage == "zero1":
            if not isinstance(run.model, DistributedDataParallel):
                wrap_ddp(run, self.params.world_size)
            from torch.distributed.optim import ZeroRedundancyOptimizer  # here: importing it costs ~2 s

            run.optimizer = ZeroRedundancyOptimizer(run.raw_model.parameters(), optimizer_class=torch.optim.AdamW,
                                                    **run.optimizer_kwargs())
        else:  # validate() refused ddp on this side: FSDP replaces it
            self.shard_fsdp(run, reshard=stage == "fsdp_full")
        run.knobs.sharding = stage
        run.info["zero_stage"] = stage

    def shard_fsdp(self, run: Any, reshard: bool) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        rank, world = join_group(run, self.params.world_size)
        run.shard_batches(rank, world)
        mesh = init_device_mesh(run.device.type, (world,))
        for block in run.blocks():  # one all-gather unit per block, then the rest at the root
            fully_shard(block, mesh=mesh, reshard_after_forward=reshard)
        fully_shard(run.raw_model, mesh=mesh, reshard_after_forward=reshard)
        run.model = run.raw_model
        run.knobs.count_activations = False  # autograd saves the gathered weights, which FSDP frees and re-gathers
        run.optimizer = run.make_optimizer(run.raw_model.parameters())  # over the sharded DTensor parameters
        run.info.update({"world_size": world, "fsdp": "fully_shard (FSDP2)", "reshard_after_forward": reshard})

    def check(self, baseline: dict[str, Any], optimized: dict[str, Any]) -> list[Check]:
        checks = [tensors_check("params_equal_ddp", baseline["params"], optimized["params"],
                                PARAM_RTOL, PARAM_ATOL, noise=noise_of(baseline, "params"))]
        measured, formula = optimized["memory"], optimized["memory_estimate"]
        rtol = STATE_RTOL[self.params.stage]
        for key in ("optimizer_states", "gradients", "weights"):
            m, f = measured[key], formula[key]
            checks.append(Check(f"{key}_bytes_match_formula", abs(m - f) <= rtol * f,
                                {"measured_per_rank": m, "formula": f, "baseline_per_rank": baseline["memory"][key],
                                 "formula_text": formula["formula"]}, f"rel {rtol:g}"))
        return checks


@hookimpl
def register_optimizations(register):
    register(Zero)
