"""Every hook a harness plugin can implement. Plugins use `from harness import hookimpl`."""

import pluggy

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


@hookspec
def register_optimizations(register):
    """Register optimization classes: call ``register(cls)`` for each `harness.Optimization` subclass."""


@hookspec
def register_workloads(register):
    """Register workload classes: call ``register(cls)`` for each `harness.Workload` subclass."""


@hookspec
def register_model_loaders(register):
    """Register model sources for a suite's `model: PREFIX:NAME`: call ``register(prefix, load, facts, help)``
    with `load(name, device, dtype, seed) -> nn.Module` and `facts(name) -> harness.models.reference.ModelFacts`
    (`harness.models.reference.ModelLoader` says what each must do). Core registers `reference:` and `hf:` this way."""


@hookspec
def harness_environment(env):
    """Add keys to the environment block (a dict) recorded in every results file."""


@hookspec
def harness_case_finished(case):
    """Observe one finished case (its results dict, as written to results.json); return nothing."""
