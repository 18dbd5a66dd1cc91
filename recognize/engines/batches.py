"""One batch through image-scope stages, with failures isolated to the image that caused them.

Policy (what both engines do with a batch whose stages raise):

* A batch that fails is retried one image at a time, so one bad image costs only itself; each
  frame is restored to its state before the batch first (a stage may have enriched some frames).
* Out of memory (`MemoryError`, torch's `OutOfMemoryError`, "out of memory" runtime errors) is
  not retried image by image blindly: memory is released and the batch is split in halves,
  which is what lowers peak memory; only a single image that still runs out fails on its own.
* A failure that repeats on every image of a batch of two or more, each tried alone, with the
  same exception type and message, is not these images' fault (a programming error, a model that
  cannot run on this device): the run stops with one `RunStopped` message naming the stage,
  instead of reporting the same error for every image of the dataset.
* Errors while *loading* a stage (missing weights, bad config) are not per-image problems either:
  they propagate and stop the run (also when the model loaded in the background: `ready`).
* Timings: the time of an attempt that failed goes to the `retried` phase once; stages are
  charged only for the attempts whose frames they returned, so a retry never counts twice.

`KeyboardInterrupt` and other `BaseException`s are never caught.
"""

from __future__ import annotations

import copy
import gc
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from recognize import heap, resident_weights
from recognize.engines.base import FrameResult, RunStopped, describe_error
from recognize.engines.timing import DECODE, LOAD, RELEASE, StageTimer
from recognize.errors import ImageError, RecognizeError
from recognize.frame import Frame
from recognize.stage import Stage

_STATE_FIELDS = ("tags", "regions", "caption", "dropped", "meta")

#: called with each stage just before it first runs in a batch; returns once its model is loaded
#: (an engine loading models in the background waits there) and raises its loading error
Ready = Callable[[Stage], None]


class StageFailed(Exception):
    """A stage raised on some frames; carries the stage's name for the one-line message."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(stage, cause)
        self.stage = stage
        self.cause = cause

    def __str__(self) -> str:
        return f"{self.stage}: {describe_error(self.cause)}"


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, torch's (CUDA/MPS) OutOfMemoryError, or a runtime error that says so."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_memory() -> None:
    gc.collect()
    heap.trim()  # freed memory kept for reuse goes back to the system: other processes may need it now
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _onednn_linear() -> ModuleType | None:
    """`recognize.onednn_linear` if imported (it imports torch; not imported, nothing was packed)."""
    return sys.modules.get("recognize.onednn_linear")


def end_of_run_memory() -> None:
    """When a run ends: the heap's kept memory goes back (`heap.trim`) and weights may be packed again
    (`onednn_linear.resume_packing`)."""
    if (onednn := _onednn_linear()) is not None:
        onednn.resume_packing()
    heap.trim()


def apply_stages(stages: Sequence[Stage], frames: list[Frame], timer: StageTimer, *,
                 chained: bool | None = None, ready: Ready | None = None) -> list[Frame]:
    """Run `stages` in order on `frames` (raises what a stage raises), each stage timed.

    `chained` (default: more than one stage): other stages run in this process between this one's
    batches, so after each stage its memory-mapped weights leave RSS (`recognize.resident_weights`),
    timed as the `release` phase, and no weights are prepacked until the run ends
    (`recognize.onednn_linear`: a packed copy is anonymous memory; kept across a chain's batches, the
    copies raised the benchmark chain's peak RSS over its 6 GB budget). `ready`: see `Ready` (default:
    the stage loads on first use).
    Freed activation memory is kept in the heap for the next layer and the next stage
    (`recognize.heap`); the engines trim it at the end of a run."""
    heap.keep_freed_memory()
    if chained is None:
        chained = len(stages) > 1
    if chained and (onednn := _onednn_linear()) is not None:  # stages take turns: no prepacked copies this run
        onednn.suspend_packing()
    for stage in stages:
        if not frames:
            return frames
        if ready is not None:
            ready(stage)
        with timer.stage(stage.name):
            out = stage(frames)
        if chained:  # the next stage's weights, not this one's, should be resident
            with timer.phase(RELEASE):
                resident_weights.release()
        if out is None:
            raise RecognizeError(f"stage {stage.name!r} returned None instead of the frames")
        if len(out) != len(frames):
            raise RecognizeError(f"stage {stage.name!r} returned {len(out)} frames for {len(frames)}; "
                                 "a stage returns every frame it was given, in order")
        frames = out
    return frames


def run_batch(stages: Sequence[Stage], frames: list[Frame], timer: StageTimer, *, isolate: bool = True,
              ready: Ready | None = None) -> list[FrameResult]:
    """One FrameResult per frame of `frames`, in order.

    Images are decoded first (an unreadable one fails alone), stages are loaded (a loading error
    raises; with `ready`, each stage's model is waited for just before the stage first runs, so
    the stages in front of it compute meanwhile), then the stages run. `isolate=False` lets the first error propagate unchanged (the
    library's `Pipeline.__call__`); otherwise failures follow the policy in this module's docstring.
    """
    results: list[FrameResult | None] = [None] * len(frames)
    readable: list[int] = []
    if not isolate:
        # Library use: stages decode lazily (a frame nobody looks at is never decoded, e.g. SAM on a
        # frame without regions) and a bad file raises where it is read, like any other error.
        readable = list(range(len(frames)))
    else:
        with timer.phase(DECODE):
            for i, frame in enumerate(frames):
                try:
                    frame.image  # noqa: B018 - decode now: a bad file is reported, not raised mid-stage
                except ImageError as exc:
                    results[i] = FrameResult(frame, str(exc))
                else:
                    readable.append(i)
    if ready is None:
        with timer.phase(LOAD):
            for stage in stages:
                stage.ensure_loaded()  # a loading error stops the run: it is not this image's fault
    todo = [frames[i] for i in readable]
    if isolate:
        done = _isolated(stages, todo, timer, ready)
    else:
        done = [FrameResult(frame) for frame in apply_stages(stages, todo, timer, ready=ready)]
    for i, result in zip(readable, done):
        results[i] = result
    return results  # type: ignore[return-value]


def _isolated(stages: Sequence[Stage], frames: list[Frame], timer: StageTimer,
              ready: Ready | None = None) -> list[FrameResult]:
    if not frames:
        return []
    saved = [_snapshot(frame) for frame in frames]
    attempt = timer.child()
    try:
        out = _apply_named(stages, frames, attempt, ready)
    except StageFailed as failure:
        timer.write_off(attempt)
        for frame, state in zip(frames, saved):
            _restore(frame, state)
        if len(frames) == 1:
            return [FrameResult(frames[0], str(failure))]
        if is_out_of_memory(failure.cause):
            release_memory()
            half = (len(frames) + 1) // 2
            results = _isolated(stages, frames[:half], timer, ready) + _isolated(stages, frames[half:], timer, ready)
        else:
            results = [result for frame in frames for result in _isolated(stages, [frame], timer, ready)]
        _stop_if_repeated(results, failure)
        return results
    timer.merge(attempt)
    return [FrameResult(frame) for frame in out]


def _apply_named(stages: Sequence[Stage], frames: list[Frame], timer: StageTimer,
                 ready: Ready | None = None) -> list[Frame]:
    for stage in stages:
        if ready is not None and frames:
            ready(stage)  # outside the try: a loading error is not these frames' fault, it stops the run
        try:
            frames = apply_stages([stage], frames, timer, chained=len(stages) > 1)
        except Exception as exc:  # noqa: BLE001 - any stage error is isolated to its frames by the caller
            raise StageFailed(stage.name, exc) from exc
    return frames


def _stop_if_repeated(results: list[FrameResult], failure: StageFailed) -> None:
    errors = {result.error for result in results}
    if len(results) > 1 and None not in errors and len(errors) == 1:
        hint = (" (out of memory even one image at a time: lower the stage's batch_size or use another device)"
                if is_out_of_memory(failure.cause) else "")
        raise RunStopped(f"stage {failure.stage!r} failed on each of the {len(results)} images of a batch, "
                         f"each tried alone, with the same error, so the run stopped{hint}: {errors.pop()}")


def _snapshot(frame: Frame) -> dict:
    return {name: copy.deepcopy(getattr(frame, name)) for name in _STATE_FIELDS}


def _restore(frame: Frame, state: dict) -> None:
    for name, value in state.items():
        setattr(frame, name, value)
