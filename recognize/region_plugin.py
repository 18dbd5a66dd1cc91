"""Built-in plugin: the data engine's stages (`merge_tags`, `region_confirm`, `region_outliers`)
and its dataset outputs (`tags_jsonl`, `data_engine_report`), registered like third-party ones."""

from __future__ import annotations

from collections.abc import Callable

from recognize.hookspecs import hookimpl


@hookimpl
def register_stages(register: Callable[[type], None]) -> None:
    from recognize.region_stages import STAGES

    for stage in STAGES:
        register(stage)


@hookimpl
def register_outputs(register: Callable[[type], None]) -> None:
    from recognize.outputs.data_engine_report import DataEngineReport
    from recognize.outputs.tags_jsonl import TagsJsonl

    register(TagsJsonl)
    register(DataEngineReport)
