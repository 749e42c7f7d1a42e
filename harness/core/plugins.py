"""Loading plugins: built-in modules, the `harness` entry-point group, and `--plugins-dir` files.

Each plugin loads as a whole or not at all: its hooks are checked against the hookspecs before it is registered,
everything it registers is checked before any of it is kept, and a plugin that fails anywhere is unregistered and
listed in `Registry.errors` under its file or entry-point name, the rest loading as usual.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from harness.core import hookspecs
from harness.core.errors import InputError, suggestion
from harness.core.optimization import KINDS, Optimization, describe_params
from harness.core.searches import CORE_SEARCHES
from harness.core.workload import Workload

BUILTIN_DIST = "harness"  # the distribution whose `harness` entry points are the built-in plugins
BLOCK_ENV = "HARNESS_BLOCK_PLUGINS"  # comma-separated plugin module names not to load
HOOKS = tuple(n for n, f in vars(hookspecs).items() if hasattr(f, "harness_spec"))


@dataclass
class Registry:
    """What the loaded plugins registered, where each came from, and which plugins failed to load."""

    manager: pluggy.PluginManager
    optimizations: dict[str, type[Optimization]] = field(default_factory=dict)
    workloads: dict[str, type[Workload]] = field(default_factory=dict)
    searches: dict[str, type] = field(default_factory=dict)  # case block key -> harness.core.searches.Search
    sources: dict[str, str] = field(default_factory=dict)  # registered name -> "builtin" / dist name / file
    errors: dict[str, str] = field(default_factory=dict)  # plugin module/entry point -> error message
    hook_failures: dict[tuple[str, str], int] = field(default_factory=dict)  # (plugin, observer hook) -> times

    def interfaces(self) -> list[type]:
        """The interfaces (typing.Protocol classes) the loaded optimizations require: each after those it extends,
        then by name."""
        required = {o.requires for o in self.optimizations.values() if o.requires is not None}
        return sorted(required, key=lambda p: (len(p.__mro__), p.__name__))

    def notify(self, hook: str, results: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """Call observer hook `hook` (harness_environment, harness_case_finished) of each plugin on its own: one
        that raises is warned about once, naming the plugin and the hook (on stderr, and in `results["warnings"]`
        when the caller has the results dict), and the other plugins and the run go on. Each gets its own copy
        of the arguments: an observer reads the record, it cannot change what the run writes."""
        for impl in reversed(getattr(self.manager.hook, hook).get_hookimpls()):  # pluggy's order: last first
            try:
                impl.function(**{name: copy.deepcopy(kwargs[name]) for name in impl.argnames})
            except (Exception, SystemExit) as exc:  # an observer must never stop the run
                self._observer_failed(impl.plugin_name, hook, exc, results)

    def extend_environment(self, env: dict[str, Any]) -> None:
        """Run each plugin's harness_environment on its own copy of `env` and keep the keys it added; a key it
        changed or removed is ignored with a warning (the harness's own keys are what the run relies on)."""
        for impl in reversed(self.manager.hook.harness_environment.get_hookimpls()):
            scratch = copy.deepcopy(env)
            try:
                impl.function(env=scratch)
            except (Exception, SystemExit) as exc:
                self._observer_failed(impl.plugin_name, "harness_environment", exc, None)
                continue
            env.update({k: v for k, v in scratch.items() if k not in env})
            touched = sorted(k for k in env if k not in scratch or scratch[k] != env[k])
            if touched:
                print(f"warning: plugin {impl.plugin_name} changed or removed environment key(s) "
                      f"{', '.join(touched)} in harness_environment: ignored (a plugin may add keys)",
                      file=sys.stderr, flush=True)

    def _observer_failed(self, plugin: str, hook: str, exc: BaseException, results: dict[str, Any] | None) -> None:
        key = (plugin, hook)
        self.hook_failures[key] = self.hook_failures.get(key, 0) + 1
        if self.hook_failures[key] > 1:
            return
        source = self.manager.plugin_sources.get(plugin, "")
        label = plugin if source in ("", plugin) else f"{plugin} ({source})"
        message = (f"plugin {label} raised in {hook}: {type(exc).__name__}: {_one_line(exc)}{_file_line(exc, plugin)}; "
                   "ignored, the run goes on")
        print(f"warning: {message}", file=sys.stderr, flush=True)
        if results is not None:
            results.setdefault("warnings", []).append(message)


def get_plugin_manager(plugins_dirs: list[str | Path] = ()) -> pluggy.PluginManager:
    """A fresh plugin manager with the built-ins, entry points and files under `plugins_dirs` loaded; a plugin
    that does not import or whose hooks do not match the hookspecs is left out and named in `pm.load_errors`.
    InputError (the `--plugins-dir` option) for a folder that does not exist."""
    dirs = [plugins_dir(d) for d in plugins_dirs]
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    pm.load_errors = {}  # plugin name -> error; read by `load_registry`
    pm.plugin_sources = {}  # plugin name -> where it came from
    for name in os.environ.get(BLOCK_ENV, "").split(","):
        if name.strip():
            pm.set_blocked(name.strip())  # pluggy's own: a blocked name is never registered
    for ep in plugin_entry_points():
        if not pm.is_blocked(ep.name):
            source = "builtin" if is_builtin(ep) else f"{ep.dist.name} {ep.dist.version}" if ep.dist else ep.value
            where = "" if is_builtin(ep) else f"from {source} (module {ep.value}): "
            _register(pm, ep.name, ep.load, source, where)
    for path in plugin_files(dirs):
        _register(pm, str(path), lambda p=path: _import_file(p), str(path), "")
    return pm


def plugin_files(dirs: list[Path]) -> list[Path]:
    """The *.py files of `dirs`, each folder in order and its files by name, each file once: a folder given twice
    (plug and plug/, or relative and absolute) or a file reachable through a symlink is one file, loaded under
    the first name it was found by."""
    seen: set[Path] = set()
    files = []
    for directory in dirs:
        for path in sorted(directory.glob("*.py")):
            real = path.resolve()
            if real not in seen:
                seen.add(real)
                files.append(path)
    return files


def plugins_dir(directory: str | Path) -> Path:
    """`directory` as a Path; InputError naming `--plugins-dir` when it is not a folder."""
    path = Path(directory)
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise InputError(f"{path} {what}", field="--plugins-dir")
    return path


def plugin_entry_points() -> list[importlib.metadata.EntryPoint]:
    """The `harness` entry points, by name: the built-in plugins (this distribution's) first, then every other
    installed package's."""
    eps = sorted(importlib.metadata.entry_points(group="harness"), key=lambda ep: ep.name)
    eps = list({(ep.name, ep.value): ep for ep in eps}.values())  # the same plugin declared twice on the path
    return [ep for ep in eps if is_builtin(ep)] + [ep for ep in eps if not is_builtin(ep)]


def builtin_modules() -> list[str]:
    """The modules of the built-in plugins (what the forkserver preloads)."""
    return [ep.value for ep in plugin_entry_points() if is_builtin(ep)]


def is_builtin(ep: importlib.metadata.EntryPoint) -> bool:
    """Whether `ep` is one of this distribution's own plugins."""
    return ep.dist is not None and ep.dist.name == BUILTIN_DIST


def _register(pm: pluggy.PluginManager, name: str, load, source: str, where: str) -> None:
    try:
        plugin = load()
        check_hooks(plugin, name)
        pm.register(plugin, name=name)
        pm.plugin_sources[name] = source
    except (Exception, SystemExit) as exc:  # a broken plugin is reported by name; the others still load
        pm.load_errors[name] = f"{where}{type(exc).__name__}: {_one_line(exc)}{_file_line(exc, name)}"


def check_hooks(plugin: Any, name: str) -> None:
    """Register `plugin` in a scratch manager first: pluggy checks each hook's arguments against its hookspec
    there, and a hook of a name no hookspec has (`register_optimisations`) is refused with the closest name."""
    scratch = pluggy.PluginManager("harness")
    scratch.add_hookspecs(hookspecs)
    scratch.register(plugin, name=name)
    for hook, caller in vars(scratch.hook).items():
        if not hook.startswith("_") and not caller.has_spec() \
                and any(not impl.optionalhook for impl in caller.get_hookimpls()):
            line = getattr(getattr(getattr(plugin, hook, None), "__code__", None), "co_firstlineno", None)
            at = f" (at {name}:{line})" if line and Path(name).is_file() else ""
            raise ValueError(f"unknown hook '{hook}'{suggestion(hook, HOOKS, 'hooks')}{at}")


def _import_file(path: Path):
    module_name = f"harness_local_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        check_hooks(module, str(path))
    except BaseException:
        sys.modules.pop(module_name, None)  # a file that fails leaves nothing behind
        if previous is not None:
            sys.modules[module_name] = previous
        raise
    return module


MAX_MESSAGE = 300  # characters of a plugin's error text shown: pluggy's own messages dump whole modules


def _one_line(exc: BaseException) -> str:
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


def _file_line(exc: BaseException, name: str) -> str:
    """" (at FILE:LINE)" of the deepest frame of the traceback in plugin file `name`, else ""."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == name]
    if isinstance(exc, SyntaxError) and exc.filename == name:
        return f" (at {name}:{exc.lineno})"
    return f" (at {name}:{frames[-1].lineno})" if frames else ""


@dataclass
class _Staged:
    """What one plugin registers, checked before any of it is kept."""

    optimizations: dict[str, type] = field(default_factory=dict)
    workloads: dict[str, type] = field(default_factory=dict)
    loaders: list[tuple] = field(default_factory=list)


def load_registry(plugins_dirs: list[str | Path] = ()) -> Registry:
    """Load plugins and collect every optimization, workload and model source they register, one plugin at a
    time: a plugin whose registration fails anywhere keeps nothing (it is unregistered) and is named in
    `errors` with the hook and what was wrong."""
    pm = get_plugin_manager(plugins_dirs)
    registry = Registry(manager=pm, errors=dict(pm.load_errors), searches={s.key: s for s in CORE_SEARCHES})
    for name, plugin in list(pm.list_name_plugin()):
        try:
            _keep(registry, name, _stage(pm, name, plugin))
        except (Exception, SystemExit) as exc:
            pm.unregister(name=name)  # its observer hooks too: nothing of it stays
            registry.errors[name] = f"{_one_line(exc)}{_file_line(exc, name)}"
    return registry


def _stage(pm: pluggy.PluginManager, name: str, plugin: Any) -> _Staged:
    staged = _Staged()
    calls = (("register_optimizations", lambda cls: _check_class(staged.optimizations, cls, Optimization)),
             ("register_workloads", lambda cls: _check_class(staged.workloads, cls, Workload)),
             ("register_model_loaders", lambda *args, **kwargs: staged.loaders.append(_check_loader(*args, **kwargs))))
    for hook, register in calls:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin is plugin:
                try:
                    impl.function(register=register)
                except Exception as exc:  # the traceback stays: _file_line reads the plugin's line from it
                    raise LoadError(f"{hook}: {type(exc).__name__}: {_one_line(exc)}").with_traceback(
                        exc.__traceback__) from None
    return staged


class LoadError(Exception):
    """What one plugin registered is refused; the message names the hook and what was wrong."""


def _check_class(table: dict[str, type], cls: Any, base: type) -> None:
    """`cls` may be registered as a `base` (Optimization / Workload): a subclass with a name, a known kind, a
    Params / Spec dataclass `harness plugins` can describe, registered once; ValueError or TypeError otherwise."""
    what = base.__name__
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{cls!r} is not a harness.{what} subclass")
    if not isinstance(cls.name, str) or not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.kind not in KINDS and not (base is Optimization and cls.kind == "" and cls.requires is not None):
        raise ValueError(f"{cls.__qualname__}.kind must be one of {KINDS}, got {cls.kind!r}")
    params = cls.Params if base is Optimization else cls.Spec
    if not dataclasses.is_dataclass(params):
        raise TypeError(f"{cls.__qualname__}.{'Params' if base is Optimization else 'Spec'} must be a dataclass")
    describe_params(params)  # what `harness plugins` shows: its annotations must resolve
    if cls.name in table:
        raise ValueError(f"'{cls.name}' is registered twice by this plugin")
    table[cls.name] = cls


def _check_loader(prefix: Any, load: Any, facts: Any, help: str = "") -> tuple:
    if not isinstance(prefix, str) or not prefix or ":" in prefix:
        raise ValueError(f"a model source prefix is a name without ':', got {prefix!r}")
    if not callable(load) or not callable(facts):
        raise TypeError(f"model source '{prefix}:': load and facts must be callables")
    return prefix, load, facts, help


def _keep(registry: Registry, name: str, staged: _Staged) -> None:
    """Keep what one plugin registered, or none of it: a name another plugin registered first is refused
    before anything is added."""
    source = registry.manager.plugin_sources.get(name, name)
    for hook, mine, table in (("register_optimizations", staged.optimizations, registry.optimizations),
                              ("register_workloads", staged.workloads, registry.workloads)):
        taken = [n for n in mine if n in table]
        if taken:
            raise LoadError(f"{hook}: '{taken[0]}' is registered twice ({registry.sources[taken[0]]} and {source})")
    _keep_loaders(staged.loaders)
    for mine, table in ((staged.optimizations, registry.optimizations), (staged.workloads, registry.workloads)):
        for cls_name, cls in mine.items():
            table[cls_name] = cls
            registry.sources[cls_name] = source
    for cls in staged.workloads.values():
        for search in getattr(cls, "searches", ()):
            registry.searches.setdefault(search.key, search)


def _keep_loaders(loaders: list[tuple]) -> None:
    from harness.models.reference import LOADERS, register_model_loader  # here: it imports torch

    saved = dict(LOADERS)
    try:
        for prefix, load, facts, help in loaders:
            register_model_loader(prefix, load, facts, help)
    except Exception as exc:
        LOADERS.clear()
        LOADERS.update(saved)
        raise LoadError(f"register_model_loaders: {type(exc).__name__}: {_one_line(exc)}") from None
