"""The segment walk, written once for every engine.

A pipeline's stages fall into *segments*: runs of consecutive stages of one scope. Image-scope
segments stream batch by batch; a dataset-scope segment needs every surviving frame at once.
`walk()` takes the frames through the segments in order and keeps the bookkeeping every engine
shares: which frames survive (a failed frame is final and reaches no later stage), the
`SegmentStore` checkpoints that let a killed run resume, the progress bar of the segments in
front of a dataset stage, and when each result becomes final. An engine supplies only *where*
things run, through the two methods of `SegmentRunner`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from recognize.engines.base import FrameResult, ResultCallback
from recognize.engines.segment_store import SegmentStore
from recognize.engines.timing import StageTimer
from recognize.frame import Frame
from recognize.stage import Stage, StageScope

if TYPE_CHECKING:  # pragma: no cover
    from recognize.pipeline import Pipeline


@dataclass(frozen=True)
class Segment:
    """Consecutive stages of one scope; `last` when its results are the run's final ones."""

    index: int
    scope: StageScope
    stages: list[Stage]
    last: bool

    @property
    def label(self) -> str:
        return " + ".join(stage.name for stage in self.stages) or "read images"


def split_segments(stages: Sequence[Stage]) -> list[Segment]:
    """The segments of `stages`; no stages at all is one empty image segment (images are still
    read, so an unreadable file is reported the same way)."""
    groups = [(scope, list(group)) for scope, group in groupby(stages, key=lambda s: s.scope)]
    groups = groups or [("image", [])]
    return [Segment(i, scope, group, i == len(groups) - 1) for i, (scope, group) in enumerate(groups)]


class SegmentRunner(Protocol):
    """Where an engine runs the work; the walk does the rest."""

    def map_images(self, pipeline: Pipeline, segment: Segment, frames: Iterable[Frame],
                   timer: StageTimer) -> Iterator[FrameResult]:
        """One FrameResult per frame, in input order, produced batch by batch (`pipeline.batch_size`)."""
        ...

    def run_dataset(self, pipeline: Pipeline, segment: Segment, frames: list[Frame],
                    timer: StageTimer) -> list[Frame]:
        """The dataset-scope stages over all `frames`; returns them, enriched, in order."""
        ...


def walk(
    pipeline: Pipeline,
    frames: Iterable[Frame],
    runner: SegmentRunner,
    *,
    timer: StageTimer,
    on_result: ResultCallback | None = None,
    checkpoint_dir: Path | None = None,
    progress: bool = False,
) -> Iterator[FrameResult]:
    """Yield each frame's final FrameResult (and pass it to `on_result`) as soon as it is final.

    Without dataset-scope stages, frames stream and results keep input order. Otherwise failures
    are final at once and survivors come after the last dataset segment, in input order (a
    dataset stage sees its frames in input order whatever engine runs the segments before it).
    """

    def final(result: FrameResult) -> FrameResult:
        if on_result is not None:
            on_result(result)
        return result

    survivors: Iterable[Frame] = frames
    for segment in split_segments(pipeline.stages):
        store = SegmentStore(None if segment.last else checkpoint_dir, segment.index)
        if segment.scope == "dataset":
            survivors = _dataset_segment(runner, pipeline, segment, list(survivors), store, timer)
            if segment.last:
                for frame in survivors:
                    yield final(FrameResult(frame))
            continue
        if segment.last:
            for result in runner.map_images(pipeline, segment, survivors, timer):
                yield final(result)
            return
        survivors = list(survivors)
        cached = [store.load(frame) for frame in survivors]
        todo = [frame for frame, done in zip(survivors, cached) if done is None]
        in_memory = {id(frame) for frame in todo if frame._image is not None}  # pixels given, not read from a file
        fresh = runner.map_images(pipeline, segment, todo, timer)
        bar = _progress_bar(progress, segment, len(todo))
        kept: list[Frame] = []
        for frame, done in zip(survivors, cached):
            if done is not None:
                kept.append(done)
                continue
            result = next(fresh)
            if bar is not None:
                bar.update(1)
            if result.ok:
                store.save(result.frame)
                if id(result.frame) not in in_memory:
                    result.frame.release_image()  # read again on demand; keeps memory flat
                kept.append(result.frame)
            else:
                yield final(result)
        if bar is not None:
            bar.close()
        survivors = kept


def _dataset_segment(runner: SegmentRunner, pipeline: Pipeline, segment: Segment, frames: list[Frame],
                     store: SegmentStore, timer: StageTimer) -> list[Frame]:
    """The segment's result, or its saved result when a killed run already got that far for every
    frame (re-running on a subset would change e.g. the clusters)."""
    cached = [store.load(frame) for frame in frames]
    if frames and all(frame is not None for frame in cached):
        return cached  # type: ignore[return-value]
    if not frames:
        return frames
    frames = runner.run_dataset(pipeline, segment, frames, timer)
    for frame in frames:
        store.save(frame)
    return frames


def _progress_bar(enabled: bool, segment: Segment, total: int):
    """A bar for the segments before a dataset stage (the runner's bar moves only on final frames)."""
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, desc=segment.label)
