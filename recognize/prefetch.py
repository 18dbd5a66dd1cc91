"""Decode the next batches' images on a background thread while the current batch computes.

Why: a 12 MP JPEG takes ~0.1-0.3 s to decode and EXIF-rotate on one core; in a plain loop that
time sits between two batches with the model idle. Pillow's decoder releases the GIL, so one
thread overlaps it with the model's compute almost entirely. Only decoding is done ahead (the
resizes are each stage's own business and depend on its parameters).

`prefetch(batches, depth)` yields the same batches, in the same order, with every frame's image
already decoded (`Frame.image`) when the batch is handed over. A frame whose image cannot be read
is handed over undecoded: reading `frame.image` in the consumer raises the very same error there,
so per-image error handling stays where it was. Memory: at most `depth` decoded batches wait
ahead of the consumer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator

from recognize import thread_priority
from recognize.frame import Frame

_DONE = object()


def decode(frame: Frame) -> None:
    """Decode `frame`'s image now (errors are left for the consumer to meet)."""
    try:
        frame.image  # noqa: B018 - the property decodes and caches
    except Exception:  # noqa: BLE001 - re-raised when the consumer reads frame.image itself
        pass


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(batches: Iterable[list[Frame]], depth: int = 1,
             prepare: Callable[[Frame], None] = decode) -> Iterator[list[Frame]]:
    """`batches` with `prepare` (decoding) run on a background thread up to `depth` batches ahead.

    `depth=0` prepares nothing ahead (the plain loop). An exception raised by the `batches`
    iterable itself is re-raised in the consumer, at the point it would have been raised. Closing
    the iterator early stops the thread after the batch it is preparing.
    """
    if depth < 1:
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            thread_priority.lower_this_thread()  # decoding ahead yields the cores to the stages' compute
            for batch in batches:
                for frame in batch:
                    if stop.is_set():
                        return
                    prepare(frame)
                if not put(batch):
                    return
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put(_Failure(error))
            return
        put(_DONE)

    worker = threading.Thread(target=work, name="recognize-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]
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
