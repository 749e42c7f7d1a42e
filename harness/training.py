"""Deprecated: the train workload moved to `harness.workloads.train`; this name stays for one release."""

import warnings

from harness.workloads.train import *  # noqa: F403
from harness.workloads.train import TrainKnobs, TrainRun, TrainSpec, TrainWorkload  # noqa: F401

warnings.warn("harness.training is deprecated: import from harness.workloads.train (or harness.api)",
              DeprecationWarning, stacklevel=2)
