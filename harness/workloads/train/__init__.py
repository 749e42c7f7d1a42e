"""The `train` workload: one forward + loss + backward + optimizer step of a causal LM on fixed batches.

Optimizations change a training run only through `TrainAPI` (interface.py): its typed knobs (`TrainKnobs`:
precision, loss scaling, micro-batches, optimizer implementation, ZeRO stage, activation counting), `model`
(wrapped by DDP / FSDP / torch.compile / peft; `raw_model` stays the plain model, whose parameter names every
check uses), `optimizer` (rebuilt with `make_optimizer`) and `shard_batches`. The step is `TrainLoop`'s
(loop.py), which every training workload shares; `TrainRun` (run.py) feeds it a GPT and token batches.
"""

from __future__ import annotations

from harness.core.hookspecs import hookimpl
from harness.core.workload import Workload
from harness.workloads.train.interface import LMTrainAPI, TrainAPI
from harness.workloads.train.knobs import TrainKnobs
from harness.workloads.train.loop import TrainLoop, adamw_kwargs, adamw_name, full_tensor, no_sync
from harness.workloads.train.run import TrainRun, load_train_model
from harness.workloads.train.spec import TrainSpec

__all__ = ["LMTrainAPI", "TrainAPI", "TrainKnobs", "TrainLoop", "TrainRun", "TrainSpec", "TrainWorkload",
           "adamw_kwargs", "adamw_name", "full_tensor", "load_train_model", "no_sync"]


class TrainWorkload(Workload):
    """Train the GPT: forward, cross-entropy loss, backward, AdamW step, on seeded synthetic batches."""

    name = "train"
    kind = "training"
    description = "One training step (forward + backward + AdamW) of the GPT on a fixed global batch."
    Spec = TrainSpec
    run_class = TrainRun

    def finish(self, run: TrainRun) -> None:
        run.info["memory_estimate"] = run.memory_estimate()


@hookimpl
def register_workloads(register):
    register(TrainWorkload)
