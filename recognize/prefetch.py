"""Decode the next batches' images on a background thread while the current batch computes.

Why: a 12 MP JPEG takes ~0.1-0.3 s to decode and EXIF-rotate on one core, and resizing it to
each model's input another ~0.05 s per model (measured on a 13.7 MP photo: RAM's 384x384 0.05 s,
Grounding DINO's 800 px 0.06 s, SAM's 1024 px 0.05 s; decoding 0.08-0.1 s); in a plain loop that
time sits between two batches with the model idle. Pillow's decoder and its resize release the
GIL, so one thread overlaps them with the model's compute almost entirely.

`prefetch(batches, depth, prepare, workers)` yields the same batches, in the same order, with `prepare`
run on every frame when the batch is handed over: `decode` (the default) decodes `Frame.image`;
`prepare_for(stages)` decodes and then runs each loaded stage's `Stage.prepare` (its resize, kept
on the frame for its `process`; the engine drops it when the batch is done). A frame whose image
cannot be read is handed over undecoded: reading `frame.image` in the consumer raises the very same
error there, so per-image error handling stays where it was. Memory: at most `depth` decoded (and
prepared) batches wait ahead of the consumer.

Threads (`workers_for`): `auto` by default: one per frame of a batch (at most 8, leaving two cores)
where every stage computes on a GPU (or MPS), one where a stage computes on the CPU, whose compute needs
the cores. `RECOGNIZE_PREFETCH_WORKERS=N` asks for N threads whatever the stages (`=1`: one, as before).
Why: with the stages on a GPU, one thread that decodes and resizes the next photos is slower than the
GPU, and Pillow's decoder and resize release the GIL, so they spread over threads. Measured on an H200
(16 cores; `bench_chain_device.py`, 2026-12-04): RAM++ alone over 32 photos at batch 8 took 13.4-18.4 s
with a thread per photo against 14.5-22.5 s with one (three alternating pairs, each faster; the part after
loading 4.5-6.1 s against 7.2-10.1 s); the whole chain (RAM++ -> Grounding DINO -> SAM, 8 photos) was
unchanged within the runs' noise (28.6-34.1 s against 28.7-34.8 s): its stages took ~1 s less, and the
run waited ~1.7 s longer for the models still loading beside it (the thread driving the GPU needs the GIL
for each kernel launch: Grounding DINO's stage time rose by ~2% on average, SAM's by ~5%). Measured on
CUDA only; `auto` counts MPS as a GPU too, untested there.
With N > 1 a stage's `prepare` runs for several frames at once (`Stage.prepare`: it must be thread-safe),
and closing the iterator waits for the batch being prepared.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, NamedTuple

from recognize import thread_priority
from recognize.engines.timing import DECODE
from recognize.frame import Frame

if TYPE_CHECKING:  # pragma: no cover
    from recognize.engines.timing import StageTimer
    from recognize.stage import Stage

_DONE = object()
log = logging.getLogger(__name__)

#: Threads that prepare a batch ahead: a whole number >= 1, or `auto` (`workers_for`); unset: `auto`.
WORKERS_ENV = "RECOGNIZE_PREFETCH_WORKERS"
#: At most this many threads prepare a batch, however large the batch and the machine.
MAX_WORKERS = 8
AUTO = "auto"


def workers_setting() -> int | str | None:
    """`RECOGNIZE_PREFETCH_WORKERS`: a number of threads, `"auto"`, or None where it is not set; anything
    else is a one-line `SettingError` (checked by the engines' `load`, before any model loads)."""
    from recognize.errors import SettingError

    setting = os.environ.get(WORKERS_ENV, "").strip()
    if not setting:
        return None
    if setting.lower() == AUTO:
        return AUTO
    try:
        workers = int(setting) if setting.isascii() and setting.isdecimal() else 0
    except ValueError:
        workers = 0
    if not 1 <= workers <= 64:
        raise SettingError(f"{WORKERS_ENV}={setting!r}: give a whole number of threads from 1 to 64, or auto")
    return workers


def workers_for(stages: Sequence[Stage], batch_size: int, cores: int | None = None, spare: int = 2) -> int:
    """How many threads prepare a batch ahead (module doc, "Threads"): `RECOGNIZE_PREFETCH_WORKERS`'s
    number where it gives one; else (`auto`, the default) one per frame of a batch where every stage
    with a device computes off the CPU (at least one does), leaving `spare` of the `cores` (default: this
    process's) to the thread that drives the GPU and to the output writer's, at most `MAX_WORKERS`; else
    one. A Ray worker passes its own share of the cores and keeps one spare (its driver writes)."""
    from recognize.stage import computes_off_cpu

    setting = workers_setting()
    if setting is not None and setting != AUTO:
        return int(setting)
    if not computes_off_cpu(stages):
        return 1
    cores = usable_cores() if cores is None else cores
    return max(1, min(batch_size, cores - spare, MAX_WORKERS))


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS says, else the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def decode(frame: Frame) -> None:
    """Decode `frame`'s image now (errors are left for the consumer to meet)."""
    try:
        frame.image  # noqa: B018 - the property decodes and caches
    except Exception:  # noqa: BLE001 - re-raised when the consumer reads frame.image itself
        pass


def prepare_for(stages: Sequence[Stage]) -> Callable[[Frame], None]:
    """What to run ahead on a frame for `stages`: decode it, then `prepare_stages`."""

    def prepare(frame: Frame) -> None:
        decode(frame)
        prepare_stages(stages, frame)

    return prepare


def prepare_stages(stages: Sequence[Stage], frame: Frame) -> None:
    """Each loaded stage's `Stage.prepare` of a decoded `frame` (stages that do not override it, and
    stages whose model is still loading, are skipped; so is an undecoded frame). An error is logged
    once per stage and left for the stage to meet again in `process`, where errors are handled."""
    from recognize.stage import Stage

    if frame._image is None:  # unreadable: the consumer reports it
        return
    for stage in stages:
        # only once loaded: `prepare` may read the loaded model's settings, and the load has imported the
        # stage's model code, which a background load may otherwise be importing on its own thread
        if type(stage).prepare is Stage.prepare or not stage.loaded:
            continue
        try:
            stage.prepare(frame)
        except Exception as error:  # noqa: BLE001 - `process` makes its input again and meets the error there
            _warn_once(stage, error)


_warned: weakref.WeakSet[Stage] = weakref.WeakSet()


def _warn_once(stage: Stage, error: Exception) -> None:
    if stage not in _warned:
        _warned.add(stage)
        log.warning("stage %r could not prepare its input ahead (it makes it in its own call instead): %s: %s",
                    stage.name, type(error).__name__, error)


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Prepared(NamedTuple):
    """A batch made ready, with the seconds its preparing took (wall time on the prefetch thread)."""

    batch: list[Frame]
    seconds: float


def prefetch(batches: Iterable[list[Frame]], depth: int = 1,
             prepare: Callable[[Frame], None] = decode, workers: int = 1,
             timer: StageTimer | None = None) -> Iterator[list[Frame]]:
    """`batches` with `prepare` (decoding) run on a background thread up to `depth` batches ahead,
    the frames of a batch on `workers` threads at once (each frame on one of them).

    `depth=0` prepares nothing ahead (the plain loop). An exception raised by the `batches`
    iterable itself is re-raised in the consumer, at the point it would have been raised. Closing
    the iterator early stops the thread after the batch it is preparing.

    `timer`: the consumer's waits for a batch count as `decode` (the stages sat idle while photos
    were decoded), and the rest of each batch's preparing seconds as `overlapped.decode` (done beside
    the compute), so that `summary.json` accounts for them (before, the waits were in `other`: on an
    H200 a tagging run had 6.3-9.0 s there of the 7.2-10.1 s after its model loaded). The wait also
    covers what the `batches` iterable itself does to produce a batch (listing the inputs, a resume's
    reading of frames already checkpointed), which is booked as `decode` too. Recorded on the
    consumer's thread only.
    """
    if depth < 1:
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    clock = timer.clock if timer is not None else time.perf_counter

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        pool = None
        try:
            thread_priority.lower_this_thread()  # decoding ahead yields the cores to the stages' compute
            if workers > 1:
                pool = ThreadPoolExecutor(workers, thread_name_prefix="recognize-prefetch",
                                          initializer=thread_priority.lower_this_thread)
            for batch in batches:
                began = clock()
                if pool is not None:
                    if stop.is_set():
                        return
                    for _ in pool.map(prepare, batch):  # re-raises a frame's error here
                        pass
                else:
                    for frame in batch:
                        if stop.is_set():
                            return
                        prepare(frame)
                if not put(_Prepared(batch, clock() - began)):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put(_Failure(error))
            return
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        put(_DONE)

    worker = threading.Thread(target=work, name="recognize-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            began = clock()
            item = ready.get()
            if timer is not None:
                waited = clock() - began
                timer.phases[DECODE] += waited
                if isinstance(item, _Prepared):
                    timer.overlapped[DECODE] += max(0.0, item.seconds - waited)
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item.batch
    finally:
        stop.set()
        worker.join(timeout=5)


def batched(frames: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    """Consecutive lists of `size` frames (the last one may be shorter)."""
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
