"""The local engine: runs a Pipeline in this process, batch by batch, isolating bad images.

It is the engine behind `Pipeline.run()` / `Pipeline(...)(images)` and the default of
`recognize run`. The stages are walked by `recognize.engines.segments.walk`; each image-scope
batch goes through `recognize.engines.batches.run_batch`, whose docstring states the failure
policy (a bad image costs only itself; out of memory splits the batch; an error that repeats on
every image of a batch stops the run with one message; loading errors stop the run).
Dataset-scope stages get every surviving frame at once, in this process.

With `background_load` (the CLI's default), `load()` loads only the first stage's model and the
others load on a background thread while the first stage computes
(`recognize.engines.background_load`); a stage waits for its model (timed as `load_wait`) only
when the first batch reaches it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from recognize.engines.background_load import BackgroundLoads
from recognize.engines.background_load import enabled as background_load_enabled
from recognize.engines.base import FrameResult, ResultCallback, describe_error
from recognize.engines.batches import Ready, apply_stages, end_of_run_memory, run_batch
from recognize.engines.segments import Segment, walk
from recognize.engines.timing import LOAD, LOAD_WAIT, StageTimer
from recognize.frame import Frame
from recognize.prefetch import batched, prefetch, prepare_for, workers_for
from recognize.stage import Stage

if TYPE_CHECKING:  # pragma: no cover
    from recognize.pipeline import Pipeline

__all__ = ["FrameResult", "LocalEngine", "describe_error"]


class LocalEngine:
    """`isolate=False` lets the first error propagate unchanged instead of failing just that
    image (what a library call such as `Pipeline(...)(images)` wants). `prefetch`: how many
    batches ahead images are decoded, and resized for the stages (`Stage.prepare`), on a background
    thread, or on several where the stages compute on a GPU (`recognize.prefetch.workers_for`); 0: none;
    only with `isolate`, since library runs decode lazily (a frame no stage reads is never decoded).
    `background_load` (default: `isolate`, and `RECOGNIZE_BACKGROUND_LOAD` not 0): `load()` loads the
    first stage's model and starts loading the others in the background for the next `run()`; off,
    (`Pipeline.load()`), every model is loaded when `load()` returns."""

    name = "local"

    def __init__(self, progress: bool = False, *, isolate: bool = True, prefetch: int = 1,
                 background_load: bool | None = None) -> None:
        #: show a progress bar for the stages before a dataset-scope stage (the runner's bar
        #: only moves when frames are final)
        self.progress = progress
        self.isolate = isolate
        self.prefetch = prefetch
        self.background_load = (isolate and background_load_enabled()) if background_load is None else background_load
        self._loads: BackgroundLoads | None = None  # started by load(), waited for by the next run()

    def load(self, pipeline: Pipeline, timer: StageTimer | None = None) -> None:
        """Check every stage's device (a GPU this machine lacks is one line before any download), then
        check (or download) every stage's model files, so an offline run names all missing files in one
        error before any image is touched; then load the models: all of them, or with `background_load`
        the first stage's now and the others on a background thread."""
        from recognize.hub import ensure_files
        from recognize.prefetch import workers_setting
        from recognize.stage import check_stage_device

        workers_setting()  # a bad RECOGNIZE_PREFETCH_WORKERS is one line before any model loads
        timer = timer if timer is not None else pipeline.timer
        self._stop_loads(timer)
        stages = list(pipeline.stages)
        now, later = (stages[:1], stages[1:]) if self.background_load else (stages, [])
        for stage in [*pipeline.stages, *pipeline.outputs]:
            check_stage_device(stage)
        with timer.phase(LOAD):
            ensure_files([ref for stage in [*pipeline.stages, *pipeline.outputs] for ref in stage.model_files()])
            for stage in now:
                stage.ensure_loaded()
        later = [stage for stage in later if not stage.loaded]
        if later:
            self._loads = BackgroundLoads(later, clock=timer.clock).start()

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
        from recognize.data_engine.crop_embeddings import crop_embeddings

        timer = timer if timer is not None else pipeline.timer
        interrupted = False
        try:
            with crop_embeddings.kept_during(pipeline.stages):  # region_confirm's, for its region_outliers
                yield from walk(pipeline, frames, self, timer=timer, on_result=on_result,
                                checkpoint_dir=checkpoint_dir, progress=self.progress)
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            self._stop_loads(timer, wait=not interrupted)
            end_of_run_memory()  # the heap's kept memory goes back (recognize.heap); packing may resume

    def _stop_loads(self, timer: StageTimer, wait: bool = True) -> None:
        """No further background load starts, and the one under way is waited for (bounded: see
        `BackgroundLoads.stop`; timed as `load_wait`) so nothing still loads while the run's last
        files are written and the process exits; not on Ctrl-C. The loading that ran beside the run
        (its seconds less those waited for) is counted in `timer.overlapped`."""
        loads, self._loads = self._loads, None
        if loads is None:
            return
        if wait:
            with timer.phase(LOAD_WAIT):
                loads.stop()
        else:
            loads.cancel()
        timer.overlapped[LOAD] += loads.beside()

    def _ready(self, timer: StageTimer) -> Ready | None:
        """The per-stage wait for models loading in the background (None: none are)."""
        loads = self._loads
        if loads is None:
            return None

        def ready(stage: Stage) -> None:
            if stage not in loads:
                if not stage.loaded:
                    with timer.phase(LOAD):
                        stage.ensure_loaded()
            elif loads.is_ready(stage):
                loads.wait(stage)  # at once; raises its load error if it had one
            else:
                with timer.phase(LOAD_WAIT):
                    loads.wait(stage)

        return ready

    # -- SegmentRunner --------------------------------------------------------------------
    def map_images(self, pipeline: Pipeline, segment: Segment, frames: Iterable[Frame],
                   timer: StageTimer) -> Iterator[FrameResult]:
        depth = self.prefetch if self.isolate else 0
        ready = self._ready(timer)
        workers = workers_for(segment.stages, pipeline.batch_size) if depth else 1
        for batch in prefetch(batched(frames, pipeline.batch_size), depth=depth, prepare=prepare_for(segment.stages),
                              workers=workers, timer=timer):
            try:
                results = run_batch(segment.stages, batch, timer, isolate=self.isolate, ready=ready)
            finally:
                for frame in batch:
                    frame.drop_prepared()  # the stages' inputs made ahead: used, or of no use any more
            yield from results

    def run_dataset(self, pipeline: Pipeline, segment: Segment, frames: Iterable[Frame],
                    timer: StageTimer) -> list[Frame]:
        """Every frame in this process's memory at once (what one machine can hold)."""
        ready = self._ready(timer)
        if ready is None:
            with timer.phase(LOAD):
                for stage in segment.stages:
                    stage.ensure_loaded()
        return apply_stages(segment.stages, list(frames), timer, ready=ready)
