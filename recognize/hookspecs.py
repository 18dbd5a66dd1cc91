"""The hooks a plugin implements. Built-in stages use the very same hooks.

A plugin is any module (or object) with functions marked `@recognize.hookimpl`, found through
the `recognize` entry-point group. Each hook receives a `register` callable:

    @hookimpl
    def register_stages(register):
        register(MyStage)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "recognize"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_stages(register: Callable[[type], None]) -> None:
    """Register `Stage` subclasses (taggers, localizers, segmenters, captioners, filters)."""


@hookspec
def register_outputs(register: Callable[[type], None]) -> None:
    """Register `OutputStage` subclasses (json, annotated_image, coco, ...)."""


@hookspec
def register_models(register: Callable[[Any], None]) -> None:
    """Register `recognize.hub.ModelCard`s: the weight and asset files a plugin needs."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add `click` commands to the `recognize` command group."""
