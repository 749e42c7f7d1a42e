"""The package layout's rules, read from the import statements (ast), not from a picture."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def test_core_imports_no_workload_and_no_plugin():
    offenders = {}
    for path in sorted((ROOT / "harness" / "core").rglob("*.py")):
        bad = {m for m in imported_modules(path) if m.startswith(("harness.workloads", "harness_plugins", "plugins"))}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, offenders


def test_core_names_no_workload():
    """Not even as a string (a plugin list, a `type == "serve"`): the workloads register themselves."""
    names = ("harness.workloads", "harness_plugins", '"serve"', '"generate"', '"train"', "'serve'")
    hits = [f"{p.relative_to(ROOT)}: {n}" for p in (ROOT / "harness" / "core").rglob("*.py")
            for n in names if n in p.read_text()]
    assert not hits, hits


def test_the_report_needs_no_workload():
    for path in sorted((ROOT / "harness" / "report").rglob("*.py")):
        assert not {m for m in imported_modules(path) if m.startswith(("harness.workloads", "harness_plugins"))}, path


def test_plugins_hold_optimizations_only():
    for path in sorted((ROOT / "plugins").glob("*.py")):
        tree = ast.parse(path.read_text())
        hooks = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "register_workloads" not in hooks, f"{path.name} registers a workload: it belongs in harness/workloads"


def test_each_workload_package_imports_no_other_plugin():
    """A workload is written against harness.api, core and models: never against an optimization."""
    for path in sorted((ROOT / "harness" / "workloads").rglob("*.py")):
        assert not {m for m in imported_modules(path) if m.startswith("harness_plugins")}, path


def test_the_old_import_paths_still_work_with_a_deprecation_warning():
    import subprocess
    import sys

    code = ("import warnings\n"
            "with warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n"
            "    from harness.training import TrainRun, TrainSpec, TrainWorkload\n"
            "    from harness.inference import GenerateRun, GenerateWorkload\n"
            "from harness.workloads.train import TrainRun as New\n"
            "assert TrainRun is New, 'a different class'\n"
            "print(sorted({str(w.message).split(':')[0] for w in caught if w.category is DeprecationWarning}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['harness.inference is deprecated', 'harness.training is deprecated']"


def test_every_optimization_names_the_interface_it_requires():
    """No built-in relies on the deprecated kind + workloads rule."""
    from harness.core.plugins import load_registry

    registry = load_registry()
    assert all(cls.requires is not None for cls in registry.optimizations.values())


def test_the_interface_check_reads_what_a_run_implements_not_what_it_names():
    import pytest
    import torch

    from harness.api import GenerateAPI, Optimization, Run, TrainAPI, TrainLoop
    from harness.core.optimization import missing_members

    class Nominal(Run, TrainAPI):  # every method, no attribute: naming the protocol implements nothing
        def blocks(self): return []
        def make_optimizer(self, params, optimizer_class=torch.optim.AdamW): return None
        def optimizer_kwargs(self): return {}
        def shard_batches(self, rank, world_size): pass
        def keep_for_backward(self, tensor): pass

    assert {"knobs", "model", "raw_model", "optimizer", "batches"} <= set(missing_members(Nominal, TrainAPI))
    assert missing_members(TrainLoop, TrainAPI) == []  # Run's own members (ctx, info) count

    class BatchAttribute(Run):  # GenerateAPI's `batch` property held as a plain attribute
        batch: int

    assert "batch()" not in missing_members(BatchAttribute, GenerateAPI)
    for wrong in (TrainAPI | GenerateAPI, "TrainAPI", torch.nn.Module):
        with pytest.raises(TypeError, match="requires must be one typing.Protocol class"):
            type("Wrong", (Optimization,), {"name": "wrong", "requires": wrong})
