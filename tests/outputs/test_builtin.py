"""The four built-in outputs are registered through the plugin hook, as outputs."""

from __future__ import annotations

from recognize import plugins
from recognize.stage import OutputStage


def test_builtin_outputs_are_registered() -> None:
    outputs = plugins.output_stages()
    assert {"json", "annotated_image", "coco", "yolo"} <= set(outputs)
    for name in ("json", "annotated_image", "coco", "yolo"):
        cls = outputs[name]
        assert issubclass(cls, OutputStage) and cls.kind == "output" and cls.name == name
        assert plugins.get_stage(name) is cls
