"""The local engine: runs a Pipeline in this process, batch by batch, isolating bad images.

It is the engine behind `Pipeline.run()` / `Pipeline(...)(images)` and the default of
`recognize run`. The stages are walked by `recognize.engines.segments.walk`; each image-scope
batch goes through `recognize.engines.batches.run_batch`, whose docstring states the failure
policy (a bad image costs only itself; out of memory splits the batch; an error that repeats on
every image of a batch stops the run with one message; loading errors stop the run).
Dataset-scope stages get every surviving frame at once, in this process.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from recognize.engines.base import FrameResult, ResultCallback, describe_error
from recognize.engines.batches import apply_stages, run_batch
from recognize.engines.segments import Segment, walk
from recognize.engines.timing import LOAD, StageTimer
from recognize.frame import Frame
from recognize.prefetch import batched, prefetch

if TYPE_CHECKING:  # pragma: no cover
    from recognize.pipeline import Pipeline

__all__ = ["FrameResult", "LocalEngine", "describe_error"]


class LocalEngine:
    """`isolate=False` lets the first error propagate unchanged instead of failing just that
    image (what a library call such as `Pipeline(...)(images)` wants). `prefetch`: how many
    batches ahead images are decoded on a background thread (`recognize.prefetch`; 0: none);
    only with `isolate`, since library runs decode lazily (a frame no stage reads is never decoded)."""

    name = "local"

    def __init__(self, progress: bool = False, *, isolate: bool = True, prefetch: int = 1) -> None:
        #: show a progress bar for the stages before a dataset-scope stage (the runner's bar
        #: only moves when frames are final)
        self.progress = progress
        self.isolate = isolate
        self.prefetch = prefetch

    def load(self, pipeline: Pipeline, timer: StageTimer | None = None) -> None:
        """Load every stage's models now, so missing weights fail before any image is touched; every
        stage's model files are checked (or downloaded) first, so an offline run names all missing
        files in one error."""
        from recognize.hub import ensure_files

        timer = timer if timer is not None else pipeline.timer
        with timer.phase(LOAD):
            ensure_files([ref for stage in [*pipeline.stages, *pipeline.outputs] for ref in stage.model_files()])
            for stage in pipeline.stages:
                stage.ensure_loaded()

    def run(
        self,
        pipeline: Pipeline,
        frames: Iterable[Frame],
        *,
        on_result: ResultCallback | None = None,
        checkpoint_dir: Path | None = None,
        timer: StageTimer | None = None,
    ) -> Iterator[FrameResult]:
        """See `recognize.engines.base.Engine.run`."""
        timer = timer if timer is not None else pipeline.timer
        return walk(pipeline, frames, self, timer=timer, on_result=on_result, checkpoint_dir=checkpoint_dir,
                    progress=self.progress)

    # -- SegmentRunner --------------------------------------------------------------------
    def map_images(self, pipeline: Pipeline, segment: Segment, frames: Iterable[Frame],
                   timer: StageTimer) -> Iterator[FrameResult]:
        depth = self.prefetch if self.isolate else 0
        for batch in prefetch(batched(frames, pipeline.batch_size), depth=depth):
            yield from run_batch(segment.stages, batch, timer, isolate=self.isolate)

    def run_dataset(self, pipeline: Pipeline, segment: Segment, frames: Iterable[Frame],
                    timer: StageTimer) -> list[Frame]:
        """Every frame in this process's memory at once (what one machine can hold)."""
        with timer.phase(LOAD):
            for stage in segment.stages:
                stage.ensure_loaded()
        return apply_stages(segment.stages, list(frames), timer)
