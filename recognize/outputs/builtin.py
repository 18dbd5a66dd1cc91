"""Registers the built-in output stages through the same hook third-party plugins use."""

from __future__ import annotations

from collections.abc import Callable

from recognize.hookspecs import hookimpl
from recognize.outputs.annotated_image import AnnotatedImage
from recognize.outputs.coco import CocoOutput
from recognize.outputs.json_output import JsonOutput
from recognize.outputs.shards import ShardsOutput
from recognize.outputs.yolo import YoloOutput

OUTPUTS = (JsonOutput, AnnotatedImage, CocoOutput, YoloOutput, ShardsOutput)


@hookimpl
def register_outputs(register: Callable[[type], None]) -> None:
    for output in OUTPUTS:
        register(output)
