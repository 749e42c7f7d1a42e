"""`VisionRun`: the `vision` workload's run, an image classifier on fixed synthetic batches, on `TrainLoop`."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.api import RunContext, TrainLoop
from harness.workloads.vision.data import image_batches
from harness.workloads.vision.models import RESNETS, Classifier, build_net, find_blocks
from harness.workloads.vision.spec import VisionSpec


class VisionRun(TrainLoop):
    """A classifier (`Classifier`: logits and cross-entropy), AdamW and fixed image batches (`VisionAPI`)."""

    image_size: int
    memory_format: torch.memory_format

    def __init__(self, spec: VisionSpec, ctx: RunContext):
        self.spec, self.image_size = spec, spec.image_size
        self.memory_format = torch.contiguous_format
        torch.manual_seed(ctx.seed)
        model = Classifier(build_net(spec.model, spec.classes, spec.image_size, spec.norm))
        model = model.to(torch.device(ctx.device)).train()
        batches = image_batches(spec.steps, spec.batch, spec.image_size, spec.classes, ctx.seed + 1)
        super().__init__(ctx, model, batches, spec.lr, spec.tf32)
        self.units = {"samples": spec.batch}  # one sample is one image: samples/s is images/s
        self.info.update({"model": spec.model, "image_size": spec.image_size, "classes": spec.classes,
                          "data": spec.data, "memory_format": "contiguous"})
        if spec.model in RESNETS:
            self.info["norm"] = spec.norm

    def blocks(self) -> list[torch.nn.Module]:
        """The classifier's repeated blocks (`models.find_blocks`): a ResNet's residual blocks, a ViT's encoder
        layers, a user module's `blocks`, else its top-level children that have parameters."""
        return find_blocks(self.raw_model.net)

    def set_memory_format(self, memory_format: torch.memory_format) -> None:
        """The model's 4-d tensors and every input batch in `memory_format` (`VisionAPI`)."""
        self.memory_format = memory_format
        self.raw_model.to(memory_format=memory_format)  # in place: the same Parameters, now strided otherwise
        self.batches = [(x.contiguous(memory_format=memory_format), y) for x, y in self.batches]
        self.info["memory_format"] = str(memory_format).removeprefix("torch.").removesuffix("_format")

    def shard_batches(self, rank: int, world_size: int) -> None:
        """`TrainLoop.shard_batches`, the slices kept in this run's memory format."""
        super().shard_batches(rank, world_size)
        self.batches = [(x.contiguous(memory_format=self.memory_format), y) for x, y in self.batches]

    def flops_per_step(self) -> float | None:
        """3 x the forward's FLOPs (backward ~2 x forward: the 6N convention of the LM workload, recompute not
        counted), the forward's counted by torch.utils.flop_counter on a copy built on the meta device (no
        memory, no compute): every conv, matmul and attention. None if the model cannot be built there."""
        if not hasattr(self, "_flops"):
            self._flops = self._count_flops()
        return self._flops

    def _count_flops(self) -> float | None:
        spec = self.spec
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                net = build_net(spec.model, spec.classes, spec.image_size, spec.norm)
                with FlopCounterMode(display=False) as counter:
                    net(torch.empty(spec.batch, 3, spec.image_size, spec.image_size))
        except Exception:  # a user's model that will not build or run on meta: MFU unknown, not a failed case
            return None
        return 3.0 * counter.get_total_flops()
