"""`harness new-plugin NAME`: writes a working plugin package (module, entry point, test) to start from."""

from __future__ import annotations

import keyword
from pathlib import Path

from harness.core.errors import InputError
from harness.core.results import ensure_dir, write_text

MODULE = '''"""{name}: generate with the model's weights in bfloat16 (a starting point: edit `apply` and `check`)."""

from dataclasses import dataclass, field

import torch

from harness.api import Check, GenerateAPI, Optimization, hookimpl


@dataclass
class Params:
    max_perplexity_change: float = field(default=0.02, metadata={{"help": "allowed relative change"}})

    def __post_init__(self):
        if not 0 < self.max_perplexity_change < 1:
            raise ValueError("max_perplexity_change must be between 0 and 1, e.g. 0.02 for 2%")


class {cls}(Optimization):
    """Casts the weights to bfloat16 for generation; keeps held-out perplexity within a bound."""

    name = "{name}"
    requires = GenerateAPI  # it changes `model` and `dtype`, and its check reads the perplexity outputs() gives
    description = "bfloat16 weights for generation (tutorial plugin)"
    Params = Params

    def supports(self, env):
        return None  # bf16 runs on every CPU and CUDA device torch supports (emulated where not native)

    def apply(self, run: GenerateAPI):
        run.model = run.model.to(torch.bfloat16)
        run.dtype = torch.bfloat16  # KV caches follow the run's dtype

    def check(self, baseline, optimized):
        change = optimized["perplexity"] / baseline["perplexity"] - 1
        return [Check("perplexity_change", abs(change) <= self.params.max_perplexity_change,
                      {{"baseline": baseline["perplexity"], "optimized": optimized["perplexity"],
                       "relative_change": change}}, f"|change| <= {{self.params.max_perplexity_change}}")]


@hookimpl
def register_optimizations(register):
    register({cls})
'''

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "harness-{dist}"
version = "0.1.0"
description = "{name}: a harness optimization plugin"
dependencies = ["harness"]

[project.entry-points.harness]
{name} = "harness_{name}"

[tool.setuptools]
py-modules = ["harness_{name}"]
'''

TEST = '''"""The plugin loads through its entry point and keeps its invariant on a tiny model."""

from harness import RunContext
from harness.core.plugins import load_registry


def test_{name}_keeps_perplexity():
    import torch

    registry = load_registry()
    assert "{name}" in registry.optimizations, registry.errors
    workload = registry.workloads["generate"]()
    spec = workload.Spec(model="nano", batch=1, prompt_len=8, new_tokens=4, prompts="synthetic")
    ctx = RunContext(device=torch.device("cpu"), env={{"device": "cpu", "peak": None}})
    opt = registry.optimizations["{name}"]()
    baseline = workload.build(spec, [], ctx).outputs()
    optimized = workload.build(spec, [opt], ctx).outputs()
    assert all(check.passed for check in opt.check(baseline, optimized))
'''

SUITE = '''name: {name}
description: The {name} plugin against fp32 generation on the tiny nano model.
device: cpu
measure: {{min_pairs: 6, min_samples: 6, min_time_s: 0.2, max_time_s: 2}}
workloads:
  gen:
    type: generate
    model: nano
    prompt_len: 16
    new_tokens: 16
    prompts: synthetic
cases:
  - workload: gen
    plugins: [{name}]
'''


def write_plugin_package(name: str, directory: Path | None = None) -> Path:
    """Write harness-NAME/ with the module, pyproject (entry point), a test and a suite; returns the folder."""
    if not name.isidentifier() or keyword.iskeyword(name) or name != name.lower():
        raise InputError(f"'{name}' is not a valid plugin name: use a lowercase Python identifier like my_opt",
                         field="name")
    folder = directory or Path(f"harness-{name.replace('_', '-')}")
    if folder.is_dir() and any(folder.iterdir()):
        raise InputError(f"{folder} exists and is not empty; choose another --dir", str(folder))
    ensure_dir(folder, "--dir")  # OutputError (exit 2) naming it when it cannot be written
    cls = "".join(part.capitalize() for part in name.split("_"))
    write_text(folder / f"harness_{name}.py", MODULE.format(name=name, cls=cls))
    write_text(folder / "pyproject.toml", PYPROJECT.format(name=name, dist=name.replace("_", "-")))
    write_text(folder / f"test_{name}.py", TEST.format(name=name))
    write_text(folder / "suite.yaml", SUITE.format(name=name))
    return folder
