"""`BackgroundWriter`: each finished image's outputs are written on one thread while the next batch computes.

Why: on a GPU the chain's stages took ~0.7 s a photo and writing its outputs (drawing the masks and boxes
on a 13.8 MP photo, the JPEG, the masks' RLE) ~1.4 s on the CPU; written on the main thread between
batches, the GPU idled for a third of the run (`benchmarks/README.md`, "The GPU table"). Here one writer
thread takes the results in the order they became final, so the done-journal's order and every
per-image guarantee stay as they were: the write function still turns an image's own write error into
that image's failure. At most `depth` results wait for the thread (a batch's worth), plus the one it
writes; the engine blocks when they are that far behind. The thread lowers its
scheduling priority (`recognize.thread_priority`), so on a CPU-only machine the stages keep the cores
and the writing fills their waits, as the decoding ahead does.

Anything else the write function raises stops the writer: it is raised in the caller at its next
`submit` or at `close`, and nothing after it is written. `close` always waits for what was submitted,
also when the run is stopping on an error of its own, so the images computed before it are not lost.

When: where the writing has a core to itself. Stages that all compute on a GPU leave the CPU's cores
to it, and so do torch threads fewer than the cores. Where torch's threads take every core (a 2-core CPU,
2 threads), the writer took time from them even at its lower priority and the stages took longer than
the writing it saved (`benchmarks/README.md`, "Writing beside the next batch"), so there the outputs are
written between batches as before. `RECOGNIZE_BACKGROUND_WRITE=1` or `=0` overrides the choice.

Interrupted (Ctrl-C) while it waits for the writer, the caller stops the writer after the image it is
writing and waits for that (at most `STOP_WAIT_SECONDS`), so the journal and the outputs are not closed
under it.

Seconds: the caller's time blocked on the writer (a full queue, the final wait) is the `write` phase
of the wall time; the writing that ran beside the stages is `overlapped.write` (never counted twice).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from recognize import thread_priority
from recognize.engines.timing import WRITE, StageTimer

__all__ = ["ENV", "BackgroundWriter", "background_for"]

#: 1: write beside the stages, 0: between batches; unset: chosen by `background_for`
ENV = "RECOGNIZE_BACKGROUND_WRITE"
#: how long an interrupted `close` waits for the image being written (one write takes seconds at most)
STOP_WAIT_SECONDS = 60.0

T = TypeVar("T")
_DONE = object()


def background_for(stages: Iterable[Any]) -> bool:
    """Whether to write beside the stages (module doc, "When"): `RECOGNIZE_BACKGROUND_WRITE` if set, else
    yes where every stage with a device computes off the CPU (at least one does), or torch's threads
    leave a core free."""
    setting = os.environ.get(ENV, "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    from recognize.prefetch import usable_cores
    from recognize.stage import computes_off_cpu

    if computes_off_cpu(stages):
        return True
    cores = usable_cores()
    torch = sys.modules.get("torch")  # a pipeline without torch stages computes on the calling thread
    threads = torch.get_num_threads() if torch is not None else cores
    return cores > threads


class BackgroundWriter(Generic[T]):
    """Calls `write(item)` for each submitted item, in order, on one daemon thread (or inline when
    `background` is False). Use as a context manager or call `close()` once."""

    def __init__(self, write: Callable[[T], None], timer: StageTimer, *, depth: int = 1,
                 background: bool = True) -> None:
        self._write, self._timer = write, timer
        self.background = background
        self._error: BaseException | None = None
        self._busy = 0.0  # the thread's writing seconds
        self._waited = 0.0  # the caller's seconds blocked on the thread
        self._closed = False
        self._stop = False  # set by an interrupted `close`: drain without writing, then end
        # set when the thread ends: waited on rather than `Thread.join`, which an interrupt can leave
        # reporting a running thread as ended (CPython before 3.13)
        self._ended = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._thread: threading.Thread | None = None
        if self.background:
            self._thread = threading.Thread(target=self._work, name="recognize-write", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        try:
            self._drain()
        finally:
            self._ended.set()

    def _drain(self) -> None:
        thread_priority.lower_this_thread()  # the stages keep the cores; writing fills their waits
        while True:
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop:
                    return
                continue
            if item is _DONE:
                return
            if self._error is not None or self._stop:
                continue  # stopped: drain without writing, so a blocked `submit` can go on to raise
            start = time.perf_counter()
            try:
                self._write(item)
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                self._error = error
            finally:
                self._busy += time.perf_counter() - start

    def submit(self, item: T) -> None:
        """Write `item` (after the ones before it); raises what stopped the writer, if anything did."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        self._raise()
        if not self.background:
            with self._timer.phase(WRITE):
                self._write(item)
            return
        start = time.perf_counter()
        self._queue.put(item)  # blocks while `depth` items wait
        self._waited += time.perf_counter() - start
        self._raise()

    def close(self, *, raise_error: bool = True) -> None:
        """Wait until everything submitted is written, then account the seconds; raises what stopped
        the writer unless `raise_error` is False (the caller is already stopping on an error of its own)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            start = time.perf_counter()
            try:
                self._queue.put(_DONE)
                self._ended.wait()
            except BaseException:  # Ctrl-C while waiting: stop after the image being written, wait for it
                self._stop = True
                self._ended.wait(STOP_WAIT_SECONDS)
                raise
            finally:
                self._waited += time.perf_counter() - start
            self._timer.phases[WRITE] += self._waited
            self._timer.overlapped[WRITE] += max(0.0, self._busy - self._waited)
        if raise_error:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundWriter[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        self.close(raise_error=error is None)
