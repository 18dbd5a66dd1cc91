"""Built-in plugin: the data engine's stages (`merge_tags`, `region_confirm`, `region_outliers`)
and its dataset outputs (`tags_jsonl`, `data_engine_report`), registered like third-party ones."""

from __future__ import annotations

from collections.abc import Callable

from recognize.hookspecs import hookimpl


@hookimpl
def register_stages(register: Callable[[type], None]) -> None:
    from recognize.data_engine.confirm_stage import RegionConfirm
    from recognize.data_engine.merge_tags_stage import MergeTags
    from recognize.data_engine.outliers_stage import RegionOutliers

    for stage in (MergeTags, RegionConfirm, RegionOutliers):
        register(stage)


@hookimpl
def register_outputs(register: Callable[[type], None]) -> None:
    from recognize.outputs.data_engine_report import DataEngineReport
    from recognize.outputs.tags_jsonl import TagsJsonl

    register(TagsJsonl)
    register(DataEngineReport)
