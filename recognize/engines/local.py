"""The local engine: runs a Pipeline in this process, batch by batch, isolating bad images.

A batch that fails is retried one frame at a time, so one bad image costs only itself.
Errors while *loading* a stage (missing weights, bad config) are not per-image problems and
stop the run.
"""

from __future__ import annotations

import copy

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

from recognize.engines.segment_store import SegmentStore
from recognize.errors import ImageError, RecognizeError
from recognize.frame import Frame
from recognize.pipeline import Pipeline
from recognize.stage import Stage


@dataclass
class FrameResult:
    """A processed frame, or the one-line reason it could not be processed."""

    frame: Frame
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, RecognizeError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".strip()


class LocalEngine:
    name = "local"

    def __init__(self, progress: bool = False) -> None:
        #: show a progress bar for the stages before a dataset-scope stage (the runner's bar
        #: only moves when frames are final)
        self.progress = progress

    def run(
        self,
        pipeline: Pipeline,
        frames: Iterable[Frame],
        on_result: Callable[[FrameResult], None] | None = None,
        checkpoint_dir: Path | None = None,
    ) -> Iterator[FrameResult]:
        """Yield a FrameResult per input frame (input order is kept for image-scope pipelines).

        With a dataset-scope stage, frames that passed the stages before it are saved under
        `checkpoint_dir` (when given) and reused by a re-run.
        """
        if not pipeline.has_dataset_stage:
            batch: list[Frame] = []
            for frame in frames:
                batch.append(frame)
                if len(batch) == pipeline.batch_size:
                    yield from self._batch(pipeline, pipeline.stages, batch, on_result)
                    batch = []
            if batch:
                yield from self._batch(pipeline, pipeline.stages, batch, on_result)
            return

        survivors = list(frames)
        failed: list[FrameResult] = []
        segments = [(scope, list(group)) for scope, group in groupby(pipeline.stages, key=lambda s: s.scope)]
        for index, (scope, stages) in enumerate(segments):
            last = index == len(segments) - 1
            if scope == "dataset":
                survivors = run_dataset_segment(pipeline, stages, survivors,
                                                SegmentStore(None if last else checkpoint_dir, index))
                continue
            kept: list[Frame] = []
            store = SegmentStore(None if last else checkpoint_dir, index)
            cached = {id(f): store.load(f) for f in survivors}
            todo = [f for f in survivors if cached[id(f)] is None]
            done_before = {id(f): cached[id(f)] for f in survivors if cached[id(f)] is not None}
            results: list[FrameResult] = []
            bar = None if last else _segment_bar(self.progress, stages, len(todo))
            for start in range(0, len(todo), pipeline.batch_size):
                chunk = todo[start : start + pipeline.batch_size]
                for result in self._batch(pipeline, stages, chunk, on_result if last else None):
                    if result.ok and not last:
                        store.save(result.frame)
                        result.frame.release_image()  # reloaded on demand; keeps memory flat
                    results.append(result)
                    if bar is not None:
                        bar.update(1)
            if bar is not None:
                bar.close()
            by_id = {id(r.frame): r for r in results}
            for frame in survivors:
                result = by_id.get(id(frame)) or FrameResult(done_before[id(frame)])
                if result.ok:
                    kept.append(result.frame)
                else:
                    failed.append(result)
                    if not last and on_result is not None:
                        on_result(result)
            survivors = kept
        if segments[-1][0] == "dataset" and on_result is not None:
            for frame in survivors:
                on_result(FrameResult(frame))
        yield from failed
        yield from (FrameResult(frame) for frame in survivors)

    def _batch(
        self,
        pipeline: Pipeline,
        stages: list[Stage],
        frames: list[Frame],
        on_result: Callable[[FrameResult], None] | None,
    ) -> Iterator[FrameResult]:
        results: list[FrameResult] = []
        good: list[Frame] = []
        for frame in frames:
            try:
                frame.image  # noqa: B018 - decode now: a bad file is reported, not raised mid-stage
                good.append(frame)
            except ImageError as exc:
                results.append(FrameResult(frame, str(exc)))
        for stage in stages:
            stage.ensure_loaded()  # a loading error stops the run: it is not this image's fault
        results.extend(self._process(pipeline, stages, good))
        order = {id(f): i for i, f in enumerate(frames)}
        results.sort(key=lambda r: order.get(id(r.frame), len(frames)))
        for result in results:
            if on_result is not None:
                on_result(result)
            yield result

    def _process(self, pipeline: Pipeline, stages: list[Stage], frames: list[Frame]) -> list[FrameResult]:
        if not frames:
            return []
        saved = [_snapshot(f) for f in frames]
        try:
            out = frames
            for stage in stages:
                out = pipeline._timed(stage, out)
            return [FrameResult(f) for f in out]
        except Exception as exc:  # noqa: BLE001 - isolate the frame that broke the batch
            for frame, state in zip(frames, saved):
                _restore(frame, state)  # a stage may have enriched some frames before failing
            if len(frames) == 1:
                return [FrameResult(frames[0], describe_error(exc))]
        results: list[FrameResult] = []
        for frame in frames:
            results.extend(self._process(pipeline, stages, [frame]))
        return results


_STATE_FIELDS = ("tags", "regions", "caption", "dropped", "meta")


def _snapshot(frame: Frame) -> dict:
    return {name: copy.deepcopy(getattr(frame, name)) for name in _STATE_FIELDS}


def _restore(frame: Frame, state: dict) -> None:
    for name, value in state.items():
        setattr(frame, name, value)


def run_dataset_segment(pipeline: Pipeline, stages: list[Stage], frames: list[Frame],
                        store: SegmentStore) -> list[Frame]:
    """Dataset-scope stages over all `frames`, or their saved result when a killed run already
    got that far for every one of them (re-running on a subset would change e.g. the clusters)."""
    cached = [store.load(frame) for frame in frames]
    if frames and all(frame is not None for frame in cached):
        return cached  # type: ignore[return-value]
    for stage in stages:
        frames = pipeline._timed(stage, frames)
    for frame in frames:
        store.save(frame)
    return frames


def _segment_bar(enabled: bool, stages: list[Stage], total: int):
    if not enabled or total == 0:
        return None
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True,
                desc=" + ".join(stage.name for stage in stages))
