"""What every engine offers: the `Engine` protocol, the per-frame `FrameResult`, and the run-stopping error.

A `Pipeline` describes the work (stages, outputs, settings); an engine runs it. The runner and
`Pipeline.run()` use engines only through this protocol, so a new engine (a queue, a cluster
scheduler) needs no change anywhere else. Both built-in engines walk the stages the same way
(`recognize.engines.segments`) and run image-scope batches the same way
(`recognize.engines.batches`); they differ only in *where* a batch or a dataset-scope stage runs.

Dataset-scope stages that partition their work (the partition contract in `recognize.stage.Stage`:
`partitioned = True`, `partition` -> `process_group` per key -> `apply_results`) run as a group-by
over their key: on the Ray engine each group's work happens on workers
(`recognize.engines.ray_partition`), in one process on the local engine
(`recognize.engines.partition`), with the same result. Other dataset-scope stages see every frame
at once, in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from recognize.errors import RecognizeError
from recognize.frame import Frame

if TYPE_CHECKING:  # pragma: no cover
    from recognize.engines.timing import StageTimer
    from recognize.pipeline import Pipeline


@dataclass
class FrameResult:
    """A processed frame, or the one-line reason it could not be processed."""

    frame: Frame
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


ResultCallback = Callable[[FrameResult], None]


class RunStopped(RecognizeError):
    """A failure that is not any one image's fault (it repeats on every image), so the run stops once."""


_LOAD_FAILURE = "_recognize_load_failure"


def mark_load_failure(exc: BaseException) -> BaseException:
    """Mark `exc` as raised while loading a stage's model (not by any image), and return it.

    Engines that load models beside the run (`recognize.engines.background_load`) raise such an
    error during `run`, not `load`; the runner then cleans up as for a run that could not start."""
    setattr(exc, _LOAD_FAILURE, True)
    return exc


def is_load_failure(exc: BaseException | None) -> bool:
    """Whether `exc` was marked by `mark_load_failure`."""
    return bool(getattr(exc, _LOAD_FAILURE, False))


def describe_error(exc: BaseException) -> str:
    """One line for a failed image: a `RecognizeError`'s message as is, otherwise `Type: message`."""
    if isinstance(exc, RecognizeError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}".strip()


@runtime_checkable
class Engine(Protocol):
    """Runs a Pipeline's stages over frames. Writing files stays with the caller (`recognize.runner`)."""

    name: str

    def load(self, pipeline: Pipeline, timer: StageTimer | None = None) -> None:
        """Pre-flight before any image is touched: make what would fail for every image (missing
        weights, an unreachable cluster) fail now, with one message."""

    def run(
        self,
        pipeline: Pipeline,
        frames: Iterable[Frame],
        *,
        on_result: ResultCallback | None = None,
        checkpoint_dir: Path | None = None,
        timer: StageTimer | None = None,
    ) -> Iterator[FrameResult]:
        """Yield one FrameResult per input frame, each final (no later stage changes it); call
        `on_result` with each as it becomes final. A failed frame never reaches later stages.

        With a dataset-scope stage, frames that passed the stages in front of it are saved under
        `checkpoint_dir` (when given) and reused by a re-run. Seconds go to `timer` (default:
        the pipeline's own `pipeline.timer`)."""
        ...
