"""`Pipeline`: an ordered list of stages that turns images into enriched Frames.

    Pipeline([Ram(threshold=0.7), GroundingDino(), Sam()])     # Python
    Pipeline.from_recipe("recipes/tag_ground_segment.yaml")    # YAML, same object

A Pipeline is the *description* of a job (stages, outputs, settings); engines run it
(`recognize.engines`: local in this process, Ray on a cluster). `run()`, `process()` and
calling the pipeline are conveniences over the local engine that raise the first error.
Image-scope stages see batches; a dataset-scope stage sees every frame at once, so the frames
before it are gathered first. Writing files is the runner's job (`recognize.runner`).
Running stages keeps the memory their layers free for reuse, process-wide (`recognize.heap`; handed back
at the end of each run; `RECOGNIZE_KEEP_FREED_MEMORY=0` turns it off).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recognize.engines.local import LocalEngine
from recognize.engines.timing import StageTimer
from recognize.errors import RecognizeError
from recognize.frame import Frame
from recognize.recipe import Recipe, build_stage, load_recipe, pipeline_name
from recognize.stage import Device, OutputStage, Stage

ImageLike = Any  # Frame | path | numpy array | PIL.Image


class Pipeline:
    """The description of a job: stages in order, output stages (for the runner), batch size and device.

    Running belongs to an engine (`recognize.engines.base.Engine`); the methods below run it on
    the local engine. `timer` collects the seconds of those runs."""

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
        #: seconds per stage and phase of the runs started through `run()`/`__call__`/`process()`
        self.timer = StageTimer()
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

    # -- running (delegated to the local engine) -----------------------------------------
    @property
    def has_dataset_stage(self) -> bool:
        return any(stage.scope == "dataset" for stage in self.stages)

    @property
    def timings(self) -> dict[str, float]:
        """Seconds per stage of the runs started through this pipeline (`timer.stages`)."""
        return self.timer.stages

    def load(self) -> None:
        """Load every stage's models now instead of on first use. Every stage's model files are
        checked (or downloaded) first, so an offline run names all missing files in one error."""
        _strict_engine().load(self)

    def process(self, frames: list[Frame]) -> list[Frame]:
        """Run every stage over `frames`, which are taken to be the whole dataset; the first error raises.

        Image-scope stages get `batch_size` frames at a time; dataset-scope stages get all.
        """
        return [result.frame for result in _strict_engine().run(self, frames)]

    def process_batch(self, frames: list[Frame]) -> list[Frame]:
        """`process` for one batch of a pipeline without dataset-scope stages."""
        if self.has_dataset_stage:
            raise RecognizeError("process_batch needs a pipeline without dataset-scope stages; use process()")
        return self.process(frames)

    def __call__(self, images: ImageLike | Iterable[ImageLike]) -> list[Frame]:
        """Process images in memory: Frames, paths, numpy arrays or PIL images. Returns Frames."""
        if isinstance(images, (Frame, str, os.PathLike, np.ndarray)) or _is_pil(images):
            images = [images]
        return self.process([to_frame(item) for item in images])

    def run(self, inputs: Iterable[str | os.PathLike[str]]) -> Iterator[Frame]:
        """Files, folders and globs in; processed Frames out, in input order.

        Without dataset-scope stages the frames stream batch by batch; with one, all are
        gathered first. An unreadable image raises `ImageError`; the CLI runner (and an engine
        used directly, `LocalEngine().run(pipeline, frames)`) reports and skips it instead.
        """
        from recognize.images import expand_inputs

        frames = (Frame(source=str(path), name=name) for path, name in expand_inputs(inputs))
        for result in _strict_engine().run(self, frames):
            yield result.frame

    def fast_modes(self) -> dict[str, dict[str, Any]]:
        """Stage name -> its opt-in fast modes that are on (`recognize.fast_modes`); `{}` on the exact path."""
        from recognize.fast_modes import active_fast_modes

        return {stage.name: modes for stage in self.stages if (modes := active_fast_modes(stage))}

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


def _strict_engine() -> LocalEngine:
    return LocalEngine(isolate=False)


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
