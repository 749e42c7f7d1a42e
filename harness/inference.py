"""Deprecated: the generate workload moved to `harness.workloads.generate`; this name stays for one release."""

import warnings

from harness.workloads.generate import *  # noqa: F403
from harness.workloads.generate import GenerateKnobs, GenerateRun, GenerateSpec, GenerateWorkload  # noqa: F401

warnings.warn("harness.inference is deprecated: import from harness.workloads.generate (or harness.api)",
              DeprecationWarning, stacklevel=2)
