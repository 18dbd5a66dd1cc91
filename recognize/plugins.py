"""The plugin manager: built-in modules and `recognize` entry points, through one set of hooks."""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from recognize import hookspecs
from recognize.errors import RecognizeError

#: Built-in plugins, registered exactly like third-party ones.
BUILTIN_PLUGINS = (
    "recognize.outputs.builtin",
    "recognize.taggers.builtin",
    "recognize.data_engine.plugin",
    "recognize.commands.builtin",
)

_lock = threading.RLock()
_pm: pluggy.PluginManager | None = None


def get_plugin_manager() -> pluggy.PluginManager:
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            for module_name in BUILTIN_PLUGINS:
                pm.register(importlib.import_module(module_name), name=module_name)
            _load_entry_points(pm)
            for module_name in _env_plugins():
                if pm.get_plugin(module_name) is None:
                    try:
                        pm.register(importlib.import_module(module_name), name=module_name)
                    except ImportError as exc:
                        raise RecognizeError(f"RECOGNIZE_PLUGINS names {module_name!r}, which cannot be imported: {exc}")
            _pm = pm
        return _pm


#: entry-point plugins: registered name -> (distribution name, version)
_distributions: dict[str, tuple[str, str]] = {}
#: plugins that failed to import: name -> one-line reason (shown by `recognize plugins`)
broken_plugins: dict[str, str] = {}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register every `recognize` entry point; a broken one is reported, not fatal."""
    for ep in metadata.entry_points(group=hookspecs.PROJECT):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - one bad plugin must not break the tool
            broken_plugins[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"recognize plugin {ep.name!r} failed to load: {exc}", stacklevel=2)
            continue
        pm.register(plugin, name=ep.name)
        if ep.dist is not None:
            _distributions[ep.name] = (ep.dist.metadata["Name"], ep.dist.version)


def _env_plugins() -> list[str]:
    """Extra plugin modules from RECOGNIZE_PLUGINS (comma-separated): a local plugin without packaging."""
    return [name.strip() for name in os.environ.get("RECOGNIZE_PLUGINS", "").split(",") if name.strip()]


def reset() -> None:
    """Forget loaded plugins (tests that install a plugin package call this)."""
    global _pm
    with _lock:
        _pm = None
        _registry_cache.clear()


_registry_cache: dict[str, dict[str, Any]] = {}


def _collect(hook_name: str, key: str = "name") -> dict[str, Any]:
    with _lock:
        if hook_name in _registry_cache:
            return _registry_cache[hook_name]
        pm = get_plugin_manager()
        found: dict[str, Any] = {}

        def register(item: Any) -> None:
            name = getattr(item, key)
            if name in found and found[name] is not item:
                raise RecognizeError(f"two plugins register {hook_name[9:].rstrip('s')} {name!r}")
            found[name] = item

        getattr(pm.hook, hook_name)(register=register)
        _registry_cache[hook_name] = found
        return found


def stages() -> dict[str, type]:
    """Every registered stage class, outputs included, by name."""
    return {**_collect("register_stages"), **_collect("register_outputs")}


def output_stages() -> dict[str, type]:
    return dict(_collect("register_outputs"))


def model_cards() -> dict[str, Any]:
    return _collect("register_models")


def get_stage(name: str) -> type:
    registry = stages()
    if name not in registry:
        raise RecognizeError(f"unknown stage {name!r}; available: {', '.join(sorted(registry))}")
    return registry[name]


@dataclass
class PluginInfo:
    name: str
    version: str | None
    builtin: bool
    stages: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)


def plugin_infos() -> list[PluginInfo]:
    """Each registered plugin with its distribution version and what it registers."""
    pm = get_plugin_manager()
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        builtin = name in BUILTIN_PLUGINS
        dist_name, version = _distributions.get(name, (name, _own_version() if builtin else None))
        info = PluginInfo(name=dist_name, version=version, builtin=builtin)
        for hook, bucket in (("register_stages", info.stages), ("register_outputs", info.outputs),
                             ("register_models", info.models)):
            impl = getattr(plugin, hook, None)
            if impl is not None:
                impl(register=lambda item, bucket=bucket: bucket.append(item.name))
        infos.append(info)
    return infos


def _own_version() -> str | None:
    try:
        return metadata.version("recognize")
    except metadata.PackageNotFoundError:
        return None
