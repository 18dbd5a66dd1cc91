"""`BackgroundWriter`: results written in order on one thread while the caller goes on; errors and seconds."""

import threading
import time
from types import SimpleNamespace

import pytest

from recognize.engines.background_write import ENV, BackgroundWriter, background_for
from recognize.engines.timing import WRITE, StageTimer


def test_items_are_written_in_order_on_another_thread_and_all_of_them_by_close():
    written, threads = [], set()

    def write(item):
        time.sleep(0.01)
        threads.add(threading.current_thread().name)
        written.append(item)

    timer = StageTimer()
    with BackgroundWriter(write, timer, depth=2, background=True) as writer:
        for i in range(10):
            writer.submit(i)
    assert written == list(range(10)) and threads == {"recognize-write"}
    # the caller's blocked seconds are the wall's write phase; the rest of the writing overlapped
    assert timer.phases[WRITE] + timer.overlapped[WRITE] >= 0.1 - 1e-3


def test_the_caller_goes_on_while_the_writer_works_and_blocks_only_when_depth_items_wait():
    release = threading.Event()
    started = []

    def write(item):
        started.append(item)
        release.wait(5)

    writer = BackgroundWriter(write, StageTimer(), depth=2, background=True)
    begin = time.perf_counter()
    writer.submit(0)  # taken by the thread, which waits
    for _ in range(100):
        if started:
            break
        time.sleep(0.01)
    writer.submit(1)
    writer.submit(2)  # two wait: the queue is full now
    assert time.perf_counter() - begin < 2
    blocked = threading.Thread(target=writer.submit, args=(3,))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # a third would exceed depth: the caller waits
    release.set()
    blocked.join(5)
    writer.close()
    assert started == [0, 1, 2, 3]


def test_an_error_the_write_raises_stops_the_writer_and_is_raised_in_the_caller():
    written = []

    def write(item):
        if item == 1:
            raise KeyError("bug")
        written.append(item)

    writer = BackgroundWriter(write, StageTimer(), depth=1, background=True)
    with pytest.raises(KeyError, match="bug"):
        for i in range(50):
            writer.submit(i)
            time.sleep(0.005)
        writer.close()
    assert written == [0]  # nothing after the error is written
    writer.close(raise_error=False)  # closing again is a no-op


def test_close_without_raising_still_writes_what_was_submitted():
    """A run stopping on its own error: the images computed before it are still written."""
    written = []
    writer = BackgroundWriter(lambda item: (time.sleep(0.02), written.append(item)), StageTimer(), depth=4,
                              background=True)
    for i in range(4):
        writer.submit(i)
    writer.close(raise_error=False)
    assert written == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(5)


def test_inline_writes_on_the_calling_thread_and_times_it_as_the_write_phase():
    names = []
    timer = StageTimer()
    writer = BackgroundWriter(lambda item: (time.sleep(0.02), names.append(threading.current_thread().name)), timer,
                              background=False)
    writer.submit(1)
    writer.close()
    assert names == [threading.current_thread().name] and timer.phases[WRITE] >= 0.02
    assert timer.overlapped[WRITE] == 0


def _stage(device):
    return SimpleNamespace(params=SimpleNamespace(device=device))


def test_background_where_a_gpu_computes_or_torch_leaves_a_core_free(monkeypatch):
    import os

    import torch

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert not background_for([_stage("cpu"), SimpleNamespace()])  # every core computes: between batches
    assert background_for([_stage("cuda"), SimpleNamespace()])  # the GPU computes: the cores are free
    assert not background_for([_stage("cpu"), _stage("cuda")])  # a CPU stage takes them meanwhile
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert background_for([_stage("cpu")])  # a core torch does not use
    monkeypatch.setenv(ENV, "0")
    assert not background_for([_stage("cuda")])
    monkeypatch.setenv(ENV, "1")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert background_for([_stage("cpu")])


def test_an_interrupted_close_stops_after_the_image_being_written_and_waits_for_it():
    """Ctrl-C while the run waits for its writer: the journal must not be closed under a write."""
    import os
    import signal

    written, writing = [], threading.Event()

    def write(item):
        writing.set()
        time.sleep(0.3)
        written.append(item)

    writer = BackgroundWriter(write, StageTimer(), depth=8, background=True)
    for i in range(5):
        writer.submit(i)
    writing.wait(5)
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()  # a real Ctrl-C: it wakes the wait
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    assert writer._ended.is_set()  # the write under way ended before close gave up
    assert written == [0]  # the rest were dropped, not written after the caller went on
