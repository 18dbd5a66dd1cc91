"""recognize: images into tags, boxes and masks.

    from recognize import Pipeline
    pipeline = Pipeline.from_recipe("recipes/tag.yaml")
    for frame in pipeline.run(["photo.jpg"]):
        print(frame.tag_names)
"""

from recognize.frame import Drop, Frame, Region, Tag
from recognize.hookspecs import hookimpl
from recognize.stage import OutputStage, Stage, StageParams

__all__ = ["Drop", "Frame", "OutputStage", "Pipeline", "Region", "Stage", "StageParams", "Tag", "hookimpl"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Pipeline pulls in the plugin machinery; import it only when asked for.
    if name == "Pipeline":
        from recognize.pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
