"""Loading plugins: built-in modules, the `harness` entry-point group, and `--plugins-dir` files."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from harness.core import hookspecs
from harness.core.optimization import KINDS, Optimization
from harness.core.searches import CORE_SEARCHES
from harness.core.workload import Workload

BUILTIN_DIST = "harness"  # the distribution whose `harness` entry points are the built-in plugins
BLOCK_ENV = "HARNESS_BLOCK_PLUGINS"  # comma-separated plugin module names not to load


@dataclass
class Registry:
    """What the loaded plugins registered, where each came from, and which plugins failed to load."""

    manager: pluggy.PluginManager
    optimizations: dict[str, type[Optimization]] = field(default_factory=dict)
    workloads: dict[str, type[Workload]] = field(default_factory=dict)
    searches: dict[str, type] = field(default_factory=dict)  # case block key -> harness.core.searches.Search
    sources: dict[str, str] = field(default_factory=dict)  # registered name -> "builtin" / dist name / file
    errors: dict[str, str] = field(default_factory=dict)  # plugin module/entry point -> error message

    def interfaces(self) -> list[type]:
        """The interfaces (typing.Protocol classes) the loaded optimizations require: each after those it extends,
        then by name."""
        required = {o.requires for o in self.optimizations.values() if o.requires is not None}
        return sorted(required, key=lambda p: (len(p.__mro__), p.__name__))


def get_plugin_manager(plugins_dirs: list[str | Path] = ()) -> pluggy.PluginManager:
    """A fresh plugin manager with the built-ins, entry points and files under `plugins_dirs` loaded."""
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
            _register(pm, ep.name, ep.load, source)
    for directory in plugins_dirs:
        for path in sorted(Path(directory).glob("*.py")):
            _register(pm, str(path), lambda p=path: _import_file(p), str(path))
    pm.check_pending()
    return pm


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
    return ep.dist is not None and ep.dist.name == BUILTIN_DIST


def _register(pm: pluggy.PluginManager, name: str, load, source: str) -> None:
    try:
        pm.register(load(), name=name)
        pm.plugin_sources[name] = source
    except Exception as exc:  # a broken plugin is reported by name; the others still load
        pm.load_errors[name] = f"{type(exc).__name__}: {exc}"


def _import_file(path: Path):
    module_name = f"harness_local_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load_registry(plugins_dirs: list[str | Path] = ()) -> Registry:
    """Load plugins and collect every optimization and workload they register."""
    pm = get_plugin_manager(plugins_dirs)
    registry = Registry(manager=pm, errors=dict(pm.load_errors),
                        searches={s.key: s for s in CORE_SEARCHES})
    for hook, table in ((pm.hook.register_optimizations, registry.optimizations),
                        (pm.hook.register_workloads, registry.workloads)):
        for impl in hook.get_hookimpls():  # one call per plugin, so each registration knows its source
            source = pm.plugin_sources.get(impl.plugin_name, impl.plugin_name)
            try:
                impl.function(register=lambda cls, table=table, source=source: _add(registry, table, cls, source))
            except Exception as exc:
                registry.errors[impl.plugin_name] = f"{hook.name}: {type(exc).__name__}: {exc}"
    from harness.models.reference import register_model_loader  # here: it imports torch

    for impl in pm.hook.register_model_loaders.get_hookimpls():
        try:
            impl.function(register=register_model_loader)
        except Exception as exc:
            registry.errors[impl.plugin_name] = f"register_model_loaders: {type(exc).__name__}: {exc}"
    return registry


def _add(registry: Registry, table: dict[str, Any], cls: type, source: str) -> None:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.kind not in KINDS and not (table is registry.optimizations and cls.kind == ""
                                      and getattr(cls, "requires", None) is not None):
        raise ValueError(f"{cls.__qualname__}.kind must be one of {KINDS}, got {cls.kind!r}")
    if cls.name in table:
        raise ValueError(f"'{cls.name}' is registered twice ({registry.sources[cls.name]} and {source})")
    table[cls.name] = cls
    registry.sources[cls.name] = source
    for search in getattr(cls, "searches", ()) if table is registry.workloads else ():
        registry.searches.setdefault(search.key, search)
