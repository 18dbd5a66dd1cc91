"""The plugin contract: the hooks a plugin implements and what `recognize` checks when it registers.

Built-in stages use the very same hooks. A plugin is a module (or object) with functions marked
`@recognize.hookimpl`, found through the `recognize` entry-point group of an installed
distribution, or named in `RECOGNIZE_PLUGINS` (comma-separated module names, for a local plugin
without packaging). `RECOGNIZE_LOAD_PLUGINS`, when set, loads only the listed distributions'
entry points (comma-separated; empty: none), as llm's `LLM_LOAD_PLUGINS` does.

    @recognize.hookimpl
    def register_stages(register):
        register(MyStage)

What registration validates (each failure is one line naming the plugin; the item is skipped and
the rest of the tool keeps working, see below):
  - `register_stages` receives `Stage` subclasses that are not `OutputStage`s; `register_outputs`
    receives `OutputStage` subclasses; `register_models` receives `recognize.hub.ModelCard`s.
  - `name`: a non-empty `str` of letters, digits, `_`, `-` and `.` (no `:`, which qualifies names),
    unique within the plugin.
  - `kind`: one of `recognize.stage.StageKind` (tagger, localizer, segmenter, captioner, filter;
    outputs are `output`), annotated `kind: ClassVar[StageKind] = "tagger"`; `scope`: one of
    `StageScope` (image, dataset); `Params`: a `StageParams` subclass.

Names and clashes: every stage is reachable by its qualified name `PLUGIN:NAME`, where PLUGIN is
the distribution name for installed plugins (`recognize-grounding-dino:grounding_dino`, `-`/`_`
and case do not matter), `recognize` for built-ins, and the module name for `RECOGNIZE_PLUGINS`
modules. The plain `NAME` works while one plugin registers it. When two plugins register one name
(two stages, or a stage and an output), nothing is replaced: the plain name becomes ambiguous and
only a recipe that uses it fails, with a message naming both plugins and their qualified names.
Model cards share one namespace; a card name registered twice is reported and the first kept.

A broken plugin never takes the tool down: an entry point or `RECOGNIZE_PLUGINS` module that
fails to import, a hook with a signature the spec does not know, a hook that raises, or a
registration that fails validation is recorded (`recognize.plugins.plugin_problems()`), shown by
`recognize plugins`, logged once as a warning, and skipped; everything else still works.

Model files: a stage declares the files it needs for its current parameters with
`Stage.model_files() -> list[recognize.hub.FileRef]` (card name + file name; a parameter that
points at a local file means that file is not listed). `recognize models download --recipe R`
fetches them all; before `load()`, a stage checks them all at once, so an offline run names every
missing file in one error.

Shared models: `recognize.stage.shared_models.get(key, factory, owner=self)` in `load()` gives one
copy per key (devices normalised: `cuda` == `cuda:0`), loads different keys in parallel, and frees a
model once no owner holds it (`Stage.unload()`, or the stage is garbage-collected); `clear()` frees all.
`Stage(params=Params(...))` counts only the fields given as set, as a dict does.

In-process (tests, notebooks): `with recognize.plugins.registered(module_or_object, name=...)` adds a
plugin for a block; `recognize.plugins.reset()` forgets every plugin, registration and problem.

Capabilities other stages rely on are `typing.Protocol`s (runtime checkable) in
`recognize.capabilities`: `ImageScorer` (`score_images`; `vocabulary` once loaded) and `ImageEmbedder`
(`embed_images`); a region stage checks its tagger with `isinstance`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover - types only: registering must import nothing heavy
    import click

    from recognize.hub import ModelCard
    from recognize.stage import OutputStage, Stage

PROJECT = "recognize"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_stages(register: Callable[[type[Stage]], None]) -> None:
    """Register `Stage` subclasses (taggers, localizers, segmenters, captioners, filters).

    Call `register(cls)` once per class. Import heavy libraries (torch, transformers, ...) inside
    the stage's `load()`/`process()`, never at the top of the module that defines it: every
    `recognize` command registers every stage.
    """


@hookspec
def register_outputs(register: Callable[[type[OutputStage]], None]) -> None:
    """Register `OutputStage` subclasses (json, annotated_image, coco, ...): `kind` is `output`."""


@hookspec
def register_models(register: Callable[[ModelCard], None]) -> None:
    """Register `recognize.hub.ModelCard`s: the weight and asset files a plugin's stages need."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add `click` commands to the `recognize` command group (`cli.add_command(...)`)."""
