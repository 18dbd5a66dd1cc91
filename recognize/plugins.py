"""The plugin manager and the registry it fills: built-in modules, `recognize` entry points and
`RECOGNIZE_PLUGINS` modules, through one set of hooks (the contract is in `recognize.hookspecs`).

Why hooks are called one implementation at a time rather than through pluggy's `pm.hook.x()`: a
single raising implementation would abort the call for every plugin, and the registry could not
say which plugin a stage came from. Calling each one lets a broken plugin be reported and skipped.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from recognize import hookspecs
from recognize.errors import RecipeError, RecognizeError

log = logging.getLogger(__name__)

#: Built-in plugins, registered exactly like third-party ones.
BUILTIN_PLUGINS = (
    "recognize.outputs.builtin",
    "recognize.taggers.builtin",
    "recognize.data_engine.plugin",
    "recognize.commands.builtin",
)
#: The qualifier of built-in stages: `recognize:ram`.
BUILTIN_QUALIFIER = "recognize"

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class ContractError(Exception):
    """What a plugin registered breaks the contract (recorded as a `PluginProblem`, never raised to the user)."""


class UnknownStageError(RecipeError):
    """No plugin registers the stage name a recipe or a caller asked for."""


class AmbiguousStageError(RecipeError):
    """Two plugins register the plain name; the message lists the qualified names to choose from."""


@dataclass(frozen=True)
class PluginProblem:
    """Something a plugin did wrong; the plugin's item (or the whole plugin) was skipped."""

    plugin: str
    problem: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r}: {self.problem}"


@dataclass(frozen=True)
class Registration:
    """One registered stage or output class, with the plugin that registered it."""

    name: str
    plugin: str
    cls: type
    output: bool
    #: the pluggy name of the module or object whose hook registered it
    source: str = ""

    @property
    def qualified(self) -> str:
        return f"{self.plugin}:{self.name}"


@dataclass
class _Registry:
    stages: list[Registration] = field(default_factory=list)
    cards: dict[str, tuple[str, str, Any]] = field(default_factory=dict)  # name -> (plugin, source, card)

    def by_name(self, name: str) -> list[Registration]:
        return [r for r in self.stages if r.name == name]


@dataclass
class _State:
    pm: pluggy.PluginManager | None = None
    #: pluggy plugin name -> qualifier (distribution name, `recognize`, or module name)
    qualifiers: dict[str, str] = field(default_factory=dict)
    #: pluggy plugin name -> (distribution name, version) for entry-point plugins
    distributions: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: problems found while loading plugins (imports, signatures) and while registering
    load_problems: list[PluginProblem] = field(default_factory=list)
    registry: _Registry | None = None
    registry_problems: list[PluginProblem] = field(default_factory=list)
    logged: set[PluginProblem] = field(default_factory=set)


_lock = threading.RLock()
_state = _State()


def normalize(name: str) -> str:
    """A plugin qualifier as compared: case, `-`, `_` and `.` do not matter (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# -- the plugin manager -----------------------------------------------------------------------


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide pluggy manager with every plugin that loaded; broken ones are recorded."""
    with _lock:
        if _state.pm is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            _state.pm = pm
            for module_name in BUILTIN_PLUGINS:
                _add(pm, module_name, BUILTIN_QUALIFIER, lambda m=module_name: importlib.import_module(m))
            _load_entry_points(pm)
            for module_name in _env_plugins():
                if pm.get_plugin(module_name) is None:
                    _add(pm, module_name, module_name, lambda m=module_name: importlib.import_module(m),
                         where="RECOGNIZE_PLUGINS names it, but ")
        return _state.pm


def _add(pm: pluggy.PluginManager, name: str, qualifier: str, load: Callable[[], Any], where: str = "") -> bool:
    """Import and register one plugin; any failure is recorded as a problem, never raised."""
    try:
        plugin = load()
    except Exception as exc:  # noqa: BLE001 - one bad plugin must not break the tool
        _problem(_state.load_problems, qualifier, f"{where}it failed to import ({_one_line(exc)}); skipped")
        return False
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        _problem(_state.load_problems, qualifier, f"{_one_line(exc)}; skipped")
        return False
    _state.qualifiers[name] = qualifier
    for hook_name in _unknown_hooks(pm, plugin):
        _problem(_state.load_problems, qualifier, f"implements {hook_name!r}, which is no recognize hook "
                 f"(known: {', '.join(_hook_names())}); it is never called")
    return True


def _hook_names() -> list[str]:
    return sorted(n for n in dir(hookspecs) if n.startswith("register_"))


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    return [caller.name for caller in pm.get_hookcallers(plugin) or [] if not caller.has_spec()]


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register every `recognize` entry point (or only those RECOGNIZE_LOAD_PLUGINS lists)."""
    wanted = _wanted_distributions()
    for ep in metadata.entry_points(group=hookspecs.PROJECT):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        dist_name = ep.dist.metadata["Name"] if ep.dist is not None else ep.name
        if wanted is not None and normalize(dist_name) not in wanted and normalize(ep.name) not in wanted:
            continue
        if _add(pm, ep.name, dist_name, ep.load) and ep.dist is not None:
            _state.distributions[ep.name] = (dist_name, ep.dist.version)


def _wanted_distributions() -> set[str] | None:
    """RECOGNIZE_LOAD_PLUGINS: None (unset) loads every entry point; a list loads only those."""
    value = os.environ.get("RECOGNIZE_LOAD_PLUGINS")
    if value is None:
        return None
    return {normalize(part.strip()) for part in value.split(",") if part.strip()}


def _env_plugins() -> list[str]:
    """Extra plugin modules from RECOGNIZE_PLUGINS (comma-separated): a local plugin without packaging."""
    return [name.strip() for name in os.environ.get("RECOGNIZE_PLUGINS", "").split(",") if name.strip()]


def reset() -> None:
    """Forget every loaded plugin and what it registered (tests that install a plugin package call this)."""
    global _state
    with _lock:
        _state = _State()


def add_plugin(plugin: Any, name: str | None = None) -> str:
    """Register an in-process plugin (a module or object with hook implementations); its stages are
    qualified by `name` (default: the module's name). A bad signature raises `RecognizeError`."""
    pm = get_plugin_manager()
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    with _lock:
        try:
            pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise RecognizeError(f"plugin {name!r}: {_one_line(exc)}") from None
        _state.qualifiers[name] = name
        _forget_registry()
    return name


def remove_plugin(name: str) -> None:
    """Unregister a plugin added with `add_plugin` (or any plugin, by its pluggy name)."""
    with _lock:
        pm = get_plugin_manager()
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        _state.qualifiers.pop(name, None)
        _forget_registry()


@contextlib.contextmanager
def registered(plugin: Any, name: str | None = None) -> Iterator[str]:
    """`add_plugin` for the duration of a `with` block (unless a plugin of that name is already there)."""
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    added = get_plugin_manager().get_plugin(name) is None
    if added:
        add_plugin(plugin, name)
    try:
        yield name
    finally:
        if added:
            remove_plugin(name)


def _forget_registry() -> None:
    _state.registry = None
    _state.registry_problems = []


# -- calling hooks, one implementation at a time ---------------------------------------------


def _qualifier(plugin_name: str) -> str:
    return _state.qualifiers.get(plugin_name, plugin_name)


def _each_impl(hook_name: str) -> Iterator[tuple[str, Callable[..., Any]]]:
    """(qualifier, hook function) of every implementation, in registration order."""
    pm = get_plugin_manager()
    caller = getattr(pm.hook, hook_name)
    for impl in caller.get_hookimpls():
        yield impl.plugin_name, impl.function


def call_hook(hook_name: str, problems: list[PluginProblem] | None = None, **kwargs: Any) -> None:
    """Call every implementation of `hook_name`; one that raises is recorded and skipped."""
    problems = _state.load_problems if problems is None else problems
    for plugin_name, function in _each_impl(hook_name):
        try:
            function(**kwargs)
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not break the others
            _problem(problems, _qualifier(plugin_name), f"{hook_name} raised {type(exc).__name__}: "
                     f"{_one_line(exc)}; what it registered before that is kept")


def _problem(problems: list[PluginProblem], plugin: str, text: str) -> None:
    item = PluginProblem(plugin, text)
    if item not in problems:
        problems.append(item)


def _one_line(exc: object) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# -- validation -------------------------------------------------------------------------------


def _check_stage(item: Any, output: bool) -> str:
    """The stage's name, or ContractError saying what breaks the contract."""
    from recognize.stage import (
        STAGE_KINDS,
        STAGE_SCOPES,
        OutputStage,
        Stage,
        StageParams,
    )

    hook = "register_outputs" if output else "register_stages"
    if not isinstance(item, type) or not issubclass(item, Stage):
        raise ContractError(f"{hook} got {item!r} ({type(item).__name__}), not a Stage subclass")
    label = item.__qualname__
    if output and not issubclass(item, OutputStage):
        raise ContractError(f"{hook} got {label}, which is not an OutputStage subclass")
    if not output and issubclass(item, OutputStage):
        raise ContractError(f"{label} is an OutputStage: register it with register_outputs")
    name = getattr(item, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ContractError(f"{label}.name is {name!r}: give a non-empty name of letters, digits, '_', '-', '.'")
    kind = getattr(item, "kind", None)
    allowed = ("output",) if output else tuple(k for k in STAGE_KINDS if k != "output")
    if kind not in allowed:
        raise ContractError(f"stage {name!r}: kind {kind!r} is not one of {', '.join(allowed)}")
    if item.scope not in STAGE_SCOPES:
        raise ContractError(f"stage {name!r}: scope {item.scope!r} is not one of {', '.join(STAGE_SCOPES)}")
    params = getattr(item, "Params", None)
    if not isinstance(params, type) or not issubclass(params, StageParams):
        raise ContractError(f"stage {name!r}: Params is {params!r}, not a StageParams subclass")
    return name


def _build_registry() -> _Registry:
    registry = _Registry()
    problems = _state.registry_problems
    for hook_name, output in (("register_stages", False), ("register_outputs", True)):
        for plugin_name, function in _each_impl(hook_name):
            qualifier = _qualifier(plugin_name)

            def register(item: Any, qualifier: str = qualifier, output: bool = output,
                         source: str = plugin_name) -> None:
                try:
                    name = _check_stage(item, output)
                except ContractError as exc:
                    _problem(problems, qualifier, f"{exc}; skipped")
                    return
                same = [r for r in registry.by_name(name) if normalize(r.plugin) == normalize(qualifier)]
                if same:
                    if same[0].cls is not item:
                        _problem(problems, qualifier, f"registers {name!r} twice ({same[0].cls.__qualname__} and "
                                 f"{item.__qualname__}); the second is skipped")
                    return
                registry.stages.append(Registration(name, qualifier, item, output, source))

            _call_one(problems, qualifier, hook_name, function, register=register)

    for plugin_name, function in _each_impl("register_models"):
        qualifier = _qualifier(plugin_name)

        def register_card(card: Any, qualifier: str = qualifier, source: str = plugin_name) -> None:
            from recognize.hub import ModelCard

            if not isinstance(card, ModelCard):
                _problem(problems, qualifier, f"register_models got {card!r} ({type(card).__name__}), "
                         "not a recognize.hub.ModelCard; skipped")
                return
            if card.name in registry.cards:
                first, _, existing = registry.cards[card.name]
                if existing != card:
                    _problem(problems, qualifier, f"model card {card.name!r} is already registered by {first!r}; "
                             "the first is kept")
                return
            registry.cards[card.name] = (qualifier, source, card)

        _call_one(problems, qualifier, "register_models", function, register=register_card)
    return registry


def _call_one(problems: list[PluginProblem], qualifier: str, hook_name: str, function: Callable[..., Any],
              **kwargs: Any) -> None:
    try:
        function(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a plugin's bug must not break the others
        _problem(problems, qualifier, f"{hook_name} raised {type(exc).__name__}: {_one_line(exc)}")


def _registry() -> _Registry:
    with _lock:
        if _state.registry is None:
            get_plugin_manager()
            _state.registry_problems = []
            _state.registry = _build_registry()
            _log_problems()
        return _state.registry


def _log_problems() -> None:
    for item in [*_state.load_problems, *_state.registry_problems]:
        if item not in _state.logged:
            _state.logged.add(item)
            log.warning("warning: %s", item)


# -- what recipes and commands read ----------------------------------------------------------


def registrations() -> list[Registration]:
    """Every registered stage and output, with its plugin (ambiguous names included)."""
    return list(_registry().stages)


def _listing(output_only: bool = False) -> dict[str, type]:
    regs = [r for r in registrations() if r.output or not output_only]
    found: dict[str, type] = {}
    for reg in regs:
        ambiguous = len({normalize(r.plugin) for r in registrations() if r.name == reg.name}) > 1
        found[reg.qualified if ambiguous else reg.name] = reg.cls
    return found


def stages() -> dict[str, type]:
    """Every registered stage class, outputs included: by plain name, or by `plugin:name` where two
    plugins register one name."""
    return _listing()


def output_stages() -> dict[str, type]:
    return _listing(output_only=True)


def model_cards() -> dict[str, Any]:
    """Every registered `recognize.hub.ModelCard`, by name."""
    return {name: card for name, (_, _, card) in _registry().cards.items()}


def find_stage(name: str) -> type | None:
    """The stage class called `name` (plain or `plugin:name`), None when none is; raises
    `AmbiguousStageError` when two plugins register the plain name."""
    regs = registrations()
    if ":" in name:
        qualifier, _, plain = name.rpartition(":")
        matches = [r for r in regs if r.name == plain and normalize(r.plugin) == normalize(qualifier)]
        return matches[0].cls if matches else None
    matches = [r for r in regs if r.name == name]
    if len({normalize(r.plugin) for r in matches}) > 1:
        choices = " or ".join(repr(r.qualified) for r in matches)
        plugins_text = " and ".join(_describe_plugin(r.plugin) for r in matches)
        raise AmbiguousStageError(f"stage {name!r} is registered by {plugins_text}; write {choices}")
    return matches[0].cls if matches else None


def _describe_plugin(qualifier: str) -> str:
    if qualifier == BUILTIN_QUALIFIER:
        return "recognize (built in)"
    for dist_name, version in _state.distributions.values():
        if dist_name == qualifier:
            return f"{dist_name} {version}"
    return qualifier


def name_for(cls: type) -> str:
    """The name a recipe must use for `cls`: its plain name, or `plugin:name` when that is ambiguous
    (so a manifest or a Ray worker rebuilds the very same stage)."""
    regs = registrations()
    mine = [r for r in regs if r.cls is cls]
    if not mine:
        return str(cls.name)
    same_name = {normalize(r.plugin) for r in regs if r.name == mine[0].name}
    return mine[0].qualified if len(same_name) > 1 else mine[0].name


def get_stage(name: str) -> type:
    """The stage class called `name` (plain or `plugin:name`); one clear error otherwise."""
    cls = find_stage(name)
    if cls is None:
        raise UnknownStageError(f"unknown stage {name!r}; available: {', '.join(sorted(stages()))}")
    return cls


def plugin_problems() -> list[PluginProblem]:
    """Everything a plugin did wrong (each was skipped): imports, hook signatures, hooks that
    raised, registrations that break the contract, clashing model cards."""
    _registry()
    return [*_state.load_problems, *_state.registry_problems]


# -- `recognize plugins` ----------------------------------------------------------------------


@dataclass
class PluginInfo:
    name: str
    version: str | None
    builtin: bool
    qualifier: str
    stages: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def plugin_infos() -> list[PluginInfo]:
    """Each plugin (loaded or broken) with its distribution version, what it registers and its problems."""
    pm = get_plugin_manager()
    registry = _registry()
    problems = plugin_problems()
    infos: list[PluginInfo] = []
    seen: set[str] = set()
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        builtin = name in BUILTIN_PLUGINS
        qualifier = _qualifier(name)
        dist_name, version = _state.distributions.get(name, (name, _own_version() if builtin else None))
        info = PluginInfo(name=dist_name, version=version, builtin=builtin, qualifier=qualifier)
        for reg in registry.stages:
            if reg.source == name:
                (info.outputs if reg.output else info.stages).append(reg.name)
        info.models = [card for card, (_, source, _) in registry.cards.items() if source == name]
        if qualifier not in seen:
            info.problems = [p.problem for p in problems if p.plugin == qualifier]
            seen.add(qualifier)
        infos.append(info)
    for problem in problems:
        if problem.plugin not in seen:  # failed to import: no plugin object
            seen.add(problem.plugin)
            infos.append(PluginInfo(name=problem.plugin, version=None, builtin=False, qualifier=problem.plugin,
                                    problems=[p.problem for p in problems if p.plugin == problem.plugin]))
    return infos


def _own_version() -> str | None:
    try:
        return metadata.version("recognize")
    except metadata.PackageNotFoundError:
        return None
