"""Issue 27, kinds 3, 6 and 10: a plugin loads whole or not at all and is named in every error; an observer that
raises is a warning, not the end of the run; a plugin's global side effects do not reach the other side."""

import json
import textwrap

import pytest
import torch

from harness.core.plugins import load_registry
from harness.core.sides import Isolation
from harness.core.workload import RunContext
from tests.conftest import FAULTY_PLUGINS, harness_cli

TINY_MEASURE = ("measure: {min_pairs: 5, min_samples: 3, min_time_s: 0.02, max_time_s: 0.5, warmup_min_iters: 2,"
                " warmup_min_s: 0.01, warmup_max_s: 0.2, timeout_s: 120, repeat: 1}\n")


def write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


OPT = """
from harness import Optimization, hookimpl

class Good(Optimization):
    name, kind = "{name}", "inference"

    def apply(self, run):
        pass
"""


def test_a_misspelled_hook_is_listed_as_failed_and_every_command_still_works(tmp_path):
    plugins = tmp_path / "plugins"
    write(plugins, "typo.py", "from harness import hookimpl\n\n\n@hookimpl\ndef register_optimisations(register):\n"
                              "    pass\n")
    listed = harness_cli("--plugins-dir", plugins, "plugins")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    assert (f"{plugins / 'typo.py'}  FAILED TO LOAD: ValueError: unknown hook 'register_optimisations'; did you mean "
            f"'register_optimizations'? (at {plugins / 'typo.py'}:4)") in listed.stdout
    assert "mixed_precision  [optimization" in listed.stdout
    checked = harness_cli("--plugins-dir", plugins, "validate", "quick")
    assert checked.returncode == 0 and "suite 'quick'" in checked.stdout
    assert f"warning: plugin {plugins / 'typo.py'} failed to load: ValueError: unknown hook" in checked.stderr


@pytest.mark.parametrize("given", ["missing", "a-file.py"])
def test_a_plugins_dir_that_is_not_a_folder_is_an_error_naming_the_option(tmp_path, given):
    path = tmp_path / given
    if given.endswith(".py"):
        path.write_text("")
    proc = harness_cli("--plugins-dir", path, "plugins")
    what = "is not a folder" if given.endswith(".py") else "does not exist"
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --plugins-dir: {path} {what}"


def test_a_file_that_fails_halfway_keeps_nothing_and_is_named_in_the_error(tmp_path):
    import sys

    from harness.models.reference import LOADERS

    plugins = tmp_path / "plugins"
    half = write(plugins, "half.py", OPT.format(name="half_good") + textwrap.dedent("""
    @hookimpl
    def register_optimizations(register):
        register(Good)
        register(object)

    @hookimpl
    def harness_case_finished(case):
        pass
    """))
    dup = write(plugins, "dup.py", OPT.format(name="mixed_precision") + textwrap.dedent("""
    @hookimpl
    def register_optimizations(register):
        register(Good)
    """))
    loader = write(plugins, "loader.py", OPT.format(name="with_loader") + textwrap.dedent("""
    @hookimpl
    def register_optimizations(register):
        register(Good)

    @hookimpl
    def register_model_loaders(register):
        register("mine", lambda *a: None, lambda n: None)
        register("reference", lambda *a: None, lambda n: None)
    """))
    requires = write(plugins, "requires.py", """
    from harness import Optimization

    class Bad(Optimization):
        name = "bad_requires"
        requires = int
    """)
    params = write(plugins, "params.py", OPT.format(name="bad_params") + textwrap.dedent("""
    Good.Params = dict

    @hookimpl
    def register_optimizations(register):
        register(Good)
    """))
    registry = load_registry([plugins])
    errors = registry.errors
    assert errors[str(half)] == (f"register_optimizations: TypeError: <class 'object'> is not a harness.Optimization "
                                 f"subclass (at {half}:13)")
    assert errors[str(dup)] == f"register_optimizations: 'mixed_precision' is registered twice (builtin and {dup})"
    assert errors[str(loader)].startswith("register_model_loaders: ValueError: model prefix 'reference:' is "
                                          "registered twice")
    assert errors[str(requires)].startswith("TypeError: Bad.requires must be one typing.Protocol class")
    assert errors[str(requires)].endswith(f"(at {requires}:4)")
    assert errors[str(params)] == f"register_optimizations: TypeError: Good.Params must be a dataclass (at {params}:14)"
    assert not {"half_good", "with_loader", "bad_requires", "bad_params"} & set(registry.optimizations)
    assert registry.sources["mixed_precision"] == "builtin" and "mine" not in LOADERS
    observers = [impl.plugin_name for impl in registry.manager.hook.harness_case_finished.get_hookimpls()]
    assert str(half) not in observers and registry.manager.get_plugin(str(half)) is None
    assert "harness_local_requires" not in sys.modules


def test_a_broken_installed_distribution_is_listed_with_its_name_and_the_rest_load(tmp_path):
    site = tmp_path / "site"
    for dist, module, body in (("broken-dist", "broken_mod", "raise ImportError('needs libfoo')\n"),
                               ("typo-dist", "typo_mod", "from harness import hookimpl\n\n@hookimpl\n"
                                                         "def harness_case_finishd(case):\n    pass\n"),
                               ("good-dist", "good_mod", OPT.format(name="from_good_dist")
                                + "\n@hookimpl\ndef register_optimizations(register):\n    register(Good)\n")):
        write(site, f"{module}.py", body)
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
        write(info, "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        write(info, "entry_points.txt", f"[harness]\n{module.removesuffix('_mod')}_plugin = {module}\n")
    proc = harness_cli("plugins", env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr
    assert ("broken_plugin  FAILED TO LOAD: from broken-dist 0.1 (module broken_mod): ImportError: needs libfoo"
            in proc.stdout)
    assert ("typo_plugin  FAILED TO LOAD: from typo-dist 0.1 (module typo_mod): ValueError: unknown hook "
            "'harness_case_finishd'; did you mean 'harness_case_finished'?") in proc.stdout
    assert "from_good_dist  [optimization, inference]  from good-dist 0.1" in proc.stdout
    assert "mixed_precision  [optimization" in proc.stdout


def test_failing_observers_are_warnings_and_the_suite_finishes_with_its_report(tmp_path):
    plugins = tmp_path / "plugins"
    seen = tmp_path / "seen.txt"
    observer = write(plugins, "observer.py", """
    from harness import hookimpl

    @hookimpl
    def harness_environment(env):
        raise RuntimeError("no cluster here")

    @hookimpl
    def harness_case_finished(case):
        raise RuntimeError("dashboard down")
    """)
    write(plugins, "counter.py", f"""
    from harness import hookimpl

    @hookimpl
    def harness_case_finished(case):
        with open({str(seen)!r}, "a") as f:
            f.write(case["id"] + "\\n")
    """)
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: observed\ndevice: cpu\nthreads: 1\n" + TINY_MEASURE
                     + "workloads:\n  a: {type: toy, size: 16}\n  b: {type: toy, size: 24}\n"
                       "cases:\n  - {workload: a, plugins: [noop]}\n  - {workload: b, plugins: [noop]}\n")
    out = tmp_path / "run"
    proc = harness_cli("--plugins-dir", plugins, "--plugins-dir", FAULTY_PLUGINS, "run", suite, "--out", out,
                       "--inline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "complete" and [c["status"] for c in results["cases"]] == ["ok", "ok"]
    failed = f"plugin {observer} raised in harness_case_finished: RuntimeError: dashboard down"
    assert [w for w in results["warnings"] if "harness_case_finished" in w] == [
        f"{failed} (at {observer}:10); ignored, the run goes on"]  # once, though both cases raised
    assert proc.stderr.count(failed) == 1
    assert f"warning: plugin {observer} raised in harness_environment: RuntimeError: no cluster here" in proc.stderr
    assert seen.read_text().split() == ["a/noop", "b/noop"]  # the other observer saw every case
    assert (out / "report.html").exists()


SIDE_EFFECTS = """
import functools
import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness import Optimization, Run, Workload, hookimpl

ORIGINAL_GELU = F.gelu


@dataclass
class Spec:
    size: int = 2048


class GeluRun(Run):
    def __init__(self, ctx, spec):
        super().__init__(ctx)
        self.x = torch.randn(spec.size)
        self.units = {"items": 1}

    def step(self):
        if self.timed:  # which gelu this side's timed steps called
            seen = self.info.setdefault("gelu_timed", [])
            which = "original" if F.gelu is ORIGINAL_GELU else "replaced"
            if which not in seen:
                seen.append(which)
        return F.gelu(self.x)


class GeluWorkload(Workload):
    name, kind, Spec = "gelu_toy", "inference", Spec

    def build(self, spec, optimizations, ctx):
        torch.manual_seed(ctx.seed)
        run = GeluRun(ctx, spec)
        for opt in optimizations:
            opt.apply(run)
        return run


class SlowGelu(Optimization):
    name, kind = "slow_gelu", "inference"

    def apply(self, run):
        original = F.gelu

        @functools.wraps(original)  # copies __module__: the harness must look at where the code lives
        def gelu(x, approximate="none"):
            for _ in range(19):
                original(x, approximate=approximate)
            return original(x, approximate=approximate)

        F.gelu = gelu


class SpinThread(Optimization):
    name, kind = "spin_thread", "inference"

    def apply(self, run):
        def spin():
            n = 0
            while True:
                n += 1

        threading.Thread(target=spin, name="spin", daemon=True).start()


@hookimpl
def register_workloads(register):
    register(GeluWorkload)


@hookimpl
def register_optimizations(register):
    register(SlowGelu)
    register(SpinThread)
"""


def test_a_replaced_global_is_isolated_and_a_leftover_thread_withholds_the_verdict(tmp_path):
    plugins = tmp_path / "plugins"
    write(plugins, "sidefx.py", SIDE_EFFECTS)
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: sidefx\ndevice: cpu\nthreads: 1\n" + TINY_MEASURE
                     + "workloads:\n  g: {type: gelu_toy}\n"
                       "cases:\n  - {workload: g, plugins: [slow_gelu]}\n  - {workload: g, plugins: [spin_thread]}\n")
    out = tmp_path / "run"
    proc = harness_cli("--plugins-dir", plugins, "run", suite, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = {c["id"]: c for c in json.loads((out / "results.json").read_text())["cases"]}
    gelu = cases["g/slow_gelu"]
    assert gelu["baseline"]["info"]["gelu_timed"] == ["original"]  # the baseline never ran the replacement
    assert gelu["optimized"]["info"]["gelu_timed"] == ["replaced"]
    assert gelu["measurement"]["side_effects"]["isolated"] == {"optimized": ["torch.nn.functional.gelu"]}
    assert ("plugin slow_gelu (optimized side) changed global state in apply(): torch.nn.functional.gelu; the "
            "harness isolated it (each side timed with its own)") in " ".join(gelu["warnings"])
    assert gelu["comparison"]["verdict"] != "inconclusive" or gelu["comparison"]["reason"]
    spin = cases["g/spin_thread"]
    threads = spin["measurement"]["side_effects"]["threads"]["optimized"]
    assert threads["threads"] == ["spin"] and threads["during"] == "baseline" and threads["cpu_share"] >= 0.05
    reason = "plugin spin_thread (optimized side) left thread 'spin' running during timing"
    assert any(w.startswith(reason) and "no faster/slower verdict" in w for w in spin["warnings"])
    assert spin["repeats"][0]["verdict"] == "inconclusive"  # the process's verdict, withheld
    assert spin["comparison"]["verdict"] == "inconclusive" and spin["comparison"]["reason"].startswith(reason)
    assert not spin["measurement"]["side_effects"]["isolated"]


@pytest.mark.parametrize("workload, spec, opts", [
    ("train", {"model": "nano", "batch": 2, "seq_len": 16, "steps": 1},
     [("mixed_precision", {}), ("activation_checkpointing", {}), ("torch_compile", {}), ("lora", {}),
      ("gradient_accumulation", {"micro_batches": 2}), ("optimizer_impl", {"impl": "for_loop"})]),
    ("generate", {"model": "nano", "prompt_len": 8, "new_tokens": 4},
     [("kv_cache", {}), ("quantization", {})]),
])
def test_the_built_in_plugins_change_no_global_state_when_applied(workload, spec, opts):
    from harness.core.optimization import build_params

    registry = load_registry()
    wl = registry.workloads[workload]()
    ctx = RunContext(device=torch.device("cpu"), env={"device": "cpu", "peak": None}, seed=0)
    sides = {name: [registry.optimizations[name](build_params(registry.optimizations[name].Params, params))]
             for name, params in opts}
    isolation = Isolation(sides)
    for name, side in sides.items():
        isolation.begin(name)
        wl.build(build_params(wl.Spec, spec), side, ctx)
        isolation.applied(name)
    isolation.restore()
    assert {name: changed for name, changed in isolation.changes.items() if changed} == {}


def test_a_folder_given_twice_or_a_file_behind_a_symlink_is_loaded_once(tmp_path, monkeypatch):
    plugins = tmp_path / "plug"
    write(plugins, "mine.py", OPT.format(name="only_once") + "\n@hookimpl\ndef register_optimizations(register):\n"
                              "    register(Good)\n")
    (plugins / "other.py").symlink_to(plugins / "mine.py")  # found after mine.py: the first name is kept
    (tmp_path / "link").symlink_to(plugins)
    monkeypatch.chdir(tmp_path)
    registry = load_registry(["plug", "plug/", plugins, tmp_path / "link"])
    assert registry.errors == {} and registry.sources["only_once"] == "plug/mine.py"
    proc = harness_cli("--plugins-dir", "plug", "--plugins-dir", "plug/", "--plugins-dir", plugins, "plugins",
                       cwd=tmp_path)
    assert proc.returncode == 0 and "FAILED TO LOAD" not in proc.stdout and "registered twice" not in proc.stdout
    assert "only_once  [optimization, inference]  from plug/mine.py" in proc.stdout


def test_a_long_plugin_error_is_one_capped_line_naming_the_file(tmp_path):
    plugins = tmp_path / "plugins"
    loud = write(plugins, "loud.py", "raise RuntimeError('x' * 5000 + '\\nsecond line')\n")
    proc = harness_cli("--plugins-dir", plugins, "plugins")
    assert proc.returncode == 0
    line = next(s for s in proc.stdout.splitlines() if s.strip().startswith(str(loud)))
    assert f"{loud}  FAILED TO LOAD: RuntimeError: xxx" in line and "..." in line and len(line) < 500
    assert f"(at {loud}:1)" in line
