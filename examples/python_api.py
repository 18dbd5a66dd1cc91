"""The Python API in a few lines: the same Pipeline as a recipe, built by hand.

    python examples/python_api.py photo.jpg [more images or folders]

Weights are fetched into the recognize cache on first use (`recognize models download NAME`
does it ahead of time); pass `checkpoint=` to use a local file instead.
"""

from __future__ import annotations

import sys

from recognize import Pipeline
from recognize.taggers.ram_stages import RamPlus


def main(inputs: list[str]) -> None:
    pipeline = Pipeline([RamPlus(threshold=0.7, exclude=["person"])], batch_size=4, device="auto")
    for frame in pipeline.run(inputs):  # files, folders, globs; Frames stream out batch by batch
        tags = ", ".join(f"{t.name} ({t.score:.2f})" for t in frame.tags)
        print(f"{frame.name}: {tags}")

    # With a localizer in the pipeline, regions convert to supervision for annotators and metrics:
    #   detections = frame.to_detections()
    # and the same pipeline from YAML:
    #   Pipeline.from_recipe("recipes/tag.yaml")


if __name__ == "__main__":
    main(sys.argv[1:] or ["photo.jpg"])
