"""The whole plugin surface: what an optimization or a workload written outside the harness imports.

An optimization subclasses `Optimization`, names the interface it needs (`requires = TrainAPI`, `LMTrainAPI`,
`GenerateAPI`, `ServeAPI`, `VisionAPI`, or a `typing.Protocol` of its own), and changes a run only through that
interface in `apply(self, run)`; its `check(baseline, optimized)` compares the two sides' `outputs()` and
returns `Check`s. A workload subclasses `Workload` with a `Spec` dataclass and a `run_class`: a training
workload's run subclasses `TrainLoop` (which implements `TrainAPI`), so every training optimization applies to
it unchanged. Register either with a `@hookimpl` of `register_optimizations` / `register_workloads` in a
module named by a `harness` entry point (docs/plugins.md).
"""

from harness.core.checks import loss_check, noise_of, precision_mismatch, tensors_check
from harness.core.hookspecs import hookimpl
from harness.core.optimization import Check, NoParams, Optimization, ParamError
from harness.core.workload import Knobs, Run, RunContext, Workload
from harness.workloads.generate.interface import GenerateAPI
from harness.workloads.generate.knobs import GenerateKnobs
from harness.workloads.serve.interface import ServeAPI
from harness.workloads.serve.knobs import ServeKnobs
from harness.workloads.train.interface import LMTrainAPI, TrainAPI
from harness.workloads.train.knobs import TrainKnobs
from harness.workloads.train.loop import TrainLoop
from harness.workloads.vision.interface import VisionAPI

__all__ = ["Check", "GenerateAPI", "GenerateKnobs", "Knobs", "LMTrainAPI", "NoParams", "Optimization", "ParamError",
           "Run", "RunContext", "ServeAPI", "ServeKnobs", "TrainAPI", "TrainKnobs", "TrainLoop", "VisionAPI",
           "Workload", "hookimpl", "loss_check", "noise_of", "precision_mismatch", "tensors_check"]
