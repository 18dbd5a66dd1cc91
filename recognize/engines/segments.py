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
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from recognize.engines.base import FrameResult, ResultCallback
from recognize.engines.frame_spool import FrameSpool
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

    def run_dataset(self, pipeline: Pipeline, segment: Segment, frames: FrameSpool,
                    timer: StageTimer) -> Iterable[Frame]:
        """The dataset-scope stages over all `frames` (read in order, as often as needed); returns
        them, enriched, in order (a list, or a generator the walk consumes once)."""
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
    Between segments the survivors wait in a `FrameSpool` on disk, not in the driver's memory:
    the driver holds the names of frames a resumed run already has, and nothing per frame else.
    """

    def final(result: FrameResult) -> FrameResult:
        if on_result is not None:
            on_result(result)
        return result

    spools: list[FrameSpool] = []

    def new_spool() -> FrameSpool:
        spools.append(FrameSpool(None if checkpoint_dir is None else Path(checkpoint_dir) / "spool"))
        return spools[-1]

    survivors: Iterable[Frame] = frames
    try:
        for segment in split_segments(pipeline.stages):
            store = SegmentStore(None if segment.last else checkpoint_dir, segment.index)
            if segment.scope == "dataset":
                spool = survivors if isinstance(survivors, FrameSpool) else new_spool().extend(survivors)
                done = _dataset_segment(runner, pipeline, segment, spool, store, timer)
                if segment.last:
                    for frame in done:
                        yield final(FrameResult(frame))
                    return
                survivors = new_spool().extend(done, like=spool)
                continue
            if segment.last:
                for result in runner.map_images(pipeline, segment, survivors, timer):
                    yield final(result)
                return
            kept = new_spool()
            yield from (final(r) for r in _image_segment(runner, pipeline, segment, survivors, store, kept,
                                                         timer, progress))
            survivors = kept
    finally:
        for spool in spools:
            spool.close()


def _image_segment(runner: SegmentRunner, pipeline: Pipeline, segment: Segment, frames: Iterable[Frame],
                   store: SegmentStore, kept: FrameSpool, timer: StageTimer, progress: bool) -> Iterator[FrameResult]:
    """Run an image segment that is not the last: survivors go to `kept` in input order (frames a
    killed run already saved come from the store), failures are yielded (they are final)."""
    # in input order: the name of a frame the store already has, or None for one sent to the runner
    order: deque[str | None] = deque()
    in_memory: deque[bool] = deque()  # per frame sent: pixels given as an array, not read from a file

    def todo() -> Iterator[Frame]:
        for frame in frames:
            if store.load(frame) is not None:
                order.append(frame.name)
                continue
            order.append(None)
            in_memory.append(frame._image is not None)
            yield frame

    def flush_cached() -> None:
        while order and order[0] is not None:
            done = store.load(Frame(source="", name=order.popleft()))
            kept.append(done)  # type: ignore[arg-type]

    bar = _progress_bar(progress, segment)
    for result in runner.map_images(pipeline, segment, todo(), timer):
        flush_cached()
        order.popleft()
        held = in_memory.popleft()
        if bar is not None:
            bar.update(1)
        if result.ok:
            store.save(result.frame)
            if not held:
                result.frame.release_image()  # read again on demand; keeps memory flat
            kept.append(result.frame, keep_object=held)
        else:
            yield result
    flush_cached()
    if bar is not None:
        bar.close()


def _dataset_segment(runner: SegmentRunner, pipeline: Pipeline, segment: Segment, frames: FrameSpool,
                     store: SegmentStore, timer: StageTimer) -> Iterable[Frame]:
    """The segment's result, or its saved result when a killed run already got that far for every
    frame (re-running on a subset would change e.g. the clusters)."""
    if not len(frames):
        return []
    if store.dir is not None and all(store.load(frame) is not None for frame in frames):
        return (store.load(frame) for frame in frames)  # type: ignore[misc]

    def saved(done: Iterable[Frame]) -> Iterator[Frame]:
        for frame in done:
            store.save(frame)
            yield frame

    return saved(runner.run_dataset(pipeline, segment, frames, timer))


def _progress_bar(enabled: bool, segment: Segment):
    """A bar for the segments before a dataset stage (the runner's bar moves only on final frames);
    without a total (the input streams), it shows images/s."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(unit="img", file=sys.stderr, dynamic_ncols=True, desc=segment.label)
