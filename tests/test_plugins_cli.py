"""Plugin loading and the plugin-author path: `harness plugins`, a broken plugin, and an external plugin
package written by `harness new-plugin`, installed, and run through the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.core.plugins import get_plugin_manager, load_registry
from tests.conftest import FAULTY_PLUGINS, harness_cli


def test_builtins_register_with_kind_and_params():
    registry = load_registry()
    assert not registry.errors, registry.errors
    assert {"train", "generate"} <= set(registry.workloads)
    assert {"mixed_precision", "activation_checkpointing", "kv_cache", "quantization"} <= set(registry.optimizations)
    for name, cls in registry.optimizations.items():
        assert cls.kind in ("training", "inference") and registry.sources[name] == "builtin"


def test_misspelled_hook_fails_loudly(tmp_path):
    (tmp_path / "typo.py").write_text("from harness import hookimpl\n\n@hookimpl\n"
                                      "def register_optimisations(register):\n    pass\n")
    error = get_plugin_manager([tmp_path]).load_errors[str(tmp_path / "typo.py")]
    assert "unknown hook 'register_optimisations'; did you mean 'register_optimizations'?" in error


def test_a_plugin_that_fails_to_import_is_named_and_the_rest_load(tmp_path):
    (tmp_path / "broken.py").write_text("raise ImportError('needs a library that is not installed')\n")
    registry = load_registry([tmp_path, FAULTY_PLUGINS])
    assert any("broken.py" in name and "not installed" in err for name, err in registry.errors.items())
    assert "noop" in registry.optimizations and "mixed_precision" in registry.optimizations
    proc = harness_cli("--plugins-dir", tmp_path, "plugins")
    assert proc.returncode == 0 and "FAILED TO LOAD" in proc.stdout and "mixed_precision" in proc.stdout


def test_plugins_json_lists_params_defaults_and_source():
    proc = harness_cli("plugins", "--json")
    data = json.loads(proc.stdout)
    rows = {row["name"]: row for row in data["plugins"]}
    mp = rows["mixed_precision"]
    assert mp["kind"] == "training" and mp["source"] == "builtin"
    assert any(p["name"] == "dtype" and p["default"] == "bf16" for p in mp["params"])


def test_new_plugin_package_installs_and_runs_through_the_cli(tmp_path):
    pkg, site = tmp_path / "pkg", tmp_path / "site"
    assert harness_cli("new-plugin", "bf16_weights", "--dir", pkg).returncode == 0
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(pkg)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": str(site)}
    listed = harness_cli("plugins", env=env)
    listing = "bf16_weights  [optimization, inference, requires GenerateAPI]  from harness-bf16-weights 0.1.0"
    assert listing in listed.stdout
    own_test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg)],
                              capture_output=True, text=True, cwd=pkg, env={**__import__("os").environ, **env})
    assert own_test.returncode == 0, own_test.stdout[-2000:]
    run = harness_cli("run", pkg / "suite.yaml", "--out", tmp_path / "run", env=env, cwd=pkg)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    (case,) = results["cases"]
    assert case["id"] == "gen/bf16_weights" and case["status"] == "ok"
    assert case["checks"][0]["name"] == "perplexity_change" and case["checks"][0]["passed"]
    assert case["optimized"]["latency"]["median"] > 0 and case["comparison"]["verdict"]


def test_plugins_piped_into_a_reader_that_leaves_early_ends_quietly():
    import subprocess
    import sys

    proc = subprocess.run(f"{sys.executable} -m harness plugins | head -1", shell=True, capture_output=True,
                          text=True)
    assert proc.stdout.count("\n") == 1 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_defaults_from_a_factory_and_required_parameters_are_shown_as_such():
    import dataclasses

    from harness.core.optimization import describe_params

    @dataclasses.dataclass
    class Params:
        size: int
        targets: list = dataclasses.field(default_factory=lambda: ["qkv"])

    assert describe_params(Params) == [
        {"name": "size", "type": "int", "default": None, "required": True, "help": ""},
        {"name": "targets", "type": "list", "default": ["qkv"], "required": False, "help": ""}]
    text = harness_cli("plugins").stdout
    assert "targets: list | None = None" in text and "MISSING" not in text and " object at 0x" not in text
    lora = next(r for r in json.loads(harness_cli("plugins", "--json").stdout)["plugins"] if r["name"] == "lora")
    assert next(p for p in lora["params"] if p["name"] == "targets")["default"] is None


def api_table() -> str:
    """The interfaces table of docs/plugins.md, from the interfaces the built-in optimizations require: their
    members (annotations and comments, methods and docstrings) and their knobs' fields and help texts."""
    from harness.core.optimization import interface_table

    return interface_table(load_registry().interfaces())


def test_the_plugin_guide_lists_every_member_and_knob_a_plugin_may_touch():
    guide = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    table = guide[guide.index("| interface | member |"):]
    stale = "docs/plugins.md's interfaces table is stale: paste `harness plugins --api`"
    assert table[:table.index("\n\n") + 1] == api_table(), stale
    assert harness_cli("plugins", "--api").stdout == api_table()


def test_a_plugin_adds_a_model_source_that_suites_and_workloads_resolve(tmp_path):
    from harness.core.optimization import ParamError
    from harness.core.workload import RunContext
    from harness.models.reference import LOADERS, load_model, model_facts
    from harness.workloads.generate import GenerateSpec, GenerateWorkload

    load_registry([FAULTY_PLUGINS])
    assert {"reference", "hf", "tiny"} <= set(LOADERS)
    assert model_facts("tiny:3").vocab_size == 256 and len(load_model("tiny:3").blocks) == 3
    run = GenerateWorkload().build(GenerateSpec(model="tiny:1", prompts="synthetic", prompt_len=4, new_tokens=3),
                                   [], RunContext(device="cpu", env={}, seed=0))
    assert run.outputs()["tokens"].shape == (1, 3)
    with pytest.raises(ParamError, match="tiny:N takes a layer count"):
        model_facts("tiny:many")
    with pytest.raises(ParamError, match="unknown model source 'tinny:'.*tiny:"):
        model_facts("tinny:2")
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ndevice: cpu\nworkloads:\n  g: {type: generate, model: 'tiny:x', prompts: synthetic}\n"
                     "cases:\n  - {workload: g, plugins: [{kv_cache: {kind: static}}]}\n")
    proc = harness_cli("--plugins-dir", FAULTY_PLUGINS, "validate", suite)
    assert proc.returncode == 2 and "s.yaml:4" in proc.stderr and "tiny:N takes a layer count" in proc.stderr
