"""recognize.thread_priority: background threads run at a lower priority than the compute threads."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from recognize import thread_priority
from recognize.frame import Frame
from recognize.prefetch import batched, prefetch

linux = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@linux
def test_lowers_only_the_calling_thread():
    seen = {}

    def body():
        before = _nice()
        seen["lowered"] = thread_priority.lower_this_thread(3)
        seen["delta"] = _nice() - before

    main_before = _nice()
    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert seen == {"lowered": True, "delta": min(3, 19 - main_before)}
    assert _nice() == main_before  # the caller's own thread is untouched


@linux
def test_the_prefetch_thread_decodes_at_a_lower_priority(tmp_path):
    import numpy as np
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    main_nice = _nice()
    seen = []

    def prepare(frame: Frame) -> None:
        seen.append(_nice())

    for _batch in prefetch(batched([Frame(source=str(path))], 1), depth=1, prepare=prepare):
        pass
    assert seen == [min(19, main_nice + thread_priority.BACKGROUND_NICE)]


def test_no_increment_changes_nothing():
    assert thread_priority.lower_this_thread(0) is False


@linux
def test_later_models_load_at_a_lower_priority():
    from recognize import Stage
    from recognize.engines.background_load import BackgroundLoads

    class Recording(Stage):
        name = "recording"
        kind = "filter"
        load_nice: int | None = None

        def load(self) -> None:
            type(self).load_nice = _nice()

        def process(self, frames):
            return frames

    main_nice = _nice()
    stage = Recording()
    loads = BackgroundLoads([stage]).start()
    loads.wait(stage)
    loads.stop()
    assert Recording.load_nice == min(19, main_nice + thread_priority.BACKGROUND_NICE)
