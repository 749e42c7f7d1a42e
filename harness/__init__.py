"""harness: what each training and inference optimization really buys, measured on the hardware in front of you."""

from harness.core.hookspecs import hookimpl
from harness.core.optimization import Check, NoParams, Optimization, ParamError
from harness.core.workload import Run, RunContext, Workload

__version__ = "0.1.0"
__all__ = ["Check", "NoParams", "Optimization", "ParamError", "Run", "RunContext", "Workload", "hookimpl"]
