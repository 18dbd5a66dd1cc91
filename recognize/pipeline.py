"""`Pipeline`: an ordered list of stages that turns images into enriched Frames.

    Pipeline([Ram(threshold=0.7), GroundingDino(), Sam()])     # Python
    Pipeline.from_recipe("recipes/tag_ground_segment.yaml")    # YAML, same object

Image-scope stages see batches; a dataset-scope stage sees every frame at once, so the frames
before it are gathered first. Writing files is the runner's job (`recognize.runner`); a
Pipeline only computes.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recognize.errors import RecognizeError
from recognize.frame import Frame
from recognize.recipe import Recipe, build_stage, load_recipe, pipeline_name
from recognize.stage import Device, OutputStage, Stage

ImageLike = Any  # Frame | path | numpy array | PIL.Image


class Pipeline:
    """Stages run in order on batches of Frames; outputs are kept for the runner."""

    def __init__(
        self,
        stages: Sequence[Stage],
        outputs: Sequence[OutputStage] = (),
        *,
        batch_size: int = 8,
        device: Device | None = None,
        name: str | None = None,
    ) -> None:
        stages = list(stages)
        outputs = list(outputs)
        for stage in stages:
            if not isinstance(stage, Stage):
                raise TypeError(f"pipeline stages must be Stage instances, got {stage!r}")
        # Output stages given among the stages are moved to the outputs, so Pipeline([...]) accepts both.
        self.outputs: list[OutputStage] = [s for s in stages if isinstance(s, OutputStage)] + outputs
        self.stages: list[Stage] = [s for s in stages if not isinstance(s, OutputStage)]
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = batch_size
        self.device = device
        self.name = name
        self.timings: dict[str, float] = defaultdict(float)
        # The device is a pipeline-wide default. The batch size is not passed down: the pipeline
        # hands each stage `batch_size` frames, and a stage's own `batch_size` caps its forward
        # passes (SAM vit_h at batch 8 would not fit in 24 GB).
        for stage in self.stages:
            stage.apply_defaults(device=device)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_recipe(cls, recipe: str | os.PathLike[str] | Recipe, overrides: Sequence[str] = ()) -> Pipeline:
        """Build from a YAML recipe file (or a loaded `Recipe`); `overrides` are `--set`-style
        `dotted.path=value` strings."""
        if not isinstance(recipe, Recipe):
            recipe = load_recipe(recipe, overrides)
        elif overrides:
            raise ValueError("overrides apply to a recipe file; pass the path, not a loaded Recipe")
        return cls(
            [build_stage(s) for s in recipe.stages],
            [build_stage(s) for s in recipe.outputs],  # type: ignore[misc]
            batch_size=recipe.settings.batch_size,
            device=recipe.settings.device,
            name=pipeline_name(recipe),
        )

    # -- running --------------------------------------------------------------------------
    @property
    def has_dataset_stage(self) -> bool:
        return any(stage.scope == "dataset" for stage in self.stages)

    def load(self) -> None:
        """Load every stage's models now instead of on first use."""
        for stage in self.stages:
            stage.ensure_loaded()

    def process(self, frames: list[Frame]) -> list[Frame]:
        """Run every stage over `frames`, which are taken to be the whole dataset.

        Image-scope stages get `batch_size` frames at a time; dataset-scope stages get all.
        """
        for stage in self.stages:
            if stage.scope == "dataset":
                frames = self._timed(stage, frames)
            else:
                result: list[Frame] = []
                for start in range(0, len(frames), self.batch_size):
                    result.extend(self._timed(stage, frames[start : start + self.batch_size]))
                frames = result
        return frames

    def process_batch(self, frames: list[Frame]) -> list[Frame]:
        """Run the image-scope stages on one batch (the pipeline must have no dataset stage)."""
        if self.has_dataset_stage:
            raise RecognizeError("process_batch needs a pipeline without dataset-scope stages; use process()")
        for stage in self.stages:
            frames = self._timed(stage, frames)
        return frames

    def _timed(self, stage: Stage, frames: list[Frame]) -> list[Frame]:
        if not frames:
            return frames
        stage.ensure_loaded()  # loading time is reported separately from per-image time
        start = time.perf_counter()
        out = stage(frames)
        self.timings[stage.name] += time.perf_counter() - start
        if out is None:
            raise RecognizeError(f"stage {stage.name!r} returned None instead of the frames")
        return out

    def __call__(self, images: ImageLike | Iterable[ImageLike]) -> list[Frame]:
        """Process images in memory: Frames, paths, numpy arrays or PIL images. Returns Frames."""
        if isinstance(images, (Frame, str, os.PathLike, np.ndarray)) or _is_pil(images):
            images = [images]
        return self.process([to_frame(item) for item in images])

    def run(self, inputs: Iterable[str | os.PathLike[str]]) -> Iterator[Frame]:
        """Files, folders and globs in; processed Frames out, in input order.

        Without dataset-scope stages the frames stream batch by batch; with one, all are
        gathered first. An unreadable image raises `ImageError`; the CLI runner skips it instead.
        """
        from recognize.images import expand_inputs

        items = expand_inputs(inputs)
        frames = (Frame(source=str(path), name=name) for path, name in items)
        if self.has_dataset_stage:
            yield from self.process(list(frames))
            return
        batch: list[Frame] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == self.batch_size:
                yield from self.process_batch(batch)
                batch = []
        if batch:
            yield from self.process_batch(batch)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "batch_size": self.batch_size,
            "device": self.device,
            "stages": [s.describe() for s in self.stages],
            "outputs": [s.describe() for s in self.outputs],
        }

    def __repr__(self) -> str:
        inner = ", ".join(repr(s) for s in [*self.stages, *self.outputs])
        return f"Pipeline([{inner}])"


def _is_pil(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, Image.Image)


def to_frame(item: ImageLike) -> Frame:
    """A Frame for a path, array or PIL image (Frames pass through)."""
    if isinstance(item, Frame):
        return item
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        frame = Frame(source=str(path), name=path.stem)
        frame.image  # noqa: B018 - decode now so a bad file fails here, with its name
        return frame
    if isinstance(item, np.ndarray) or _is_pil(item):
        from recognize.images import as_rgb_array

        return Frame.from_array(as_rgb_array(item))
    raise TypeError(f"cannot make a Frame from {type(item).__name__}")
