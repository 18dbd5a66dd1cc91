"""recognize.thread_priority: background threads run at a lower priority than the compute threads."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from recognize import Frame, Stage, thread_priority
from recognize.engines.background_load import BackgroundLoads
from recognize.prefetch import batched, prefetch


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _can_lower() -> bool:
    """Whether a thread here can be lowered by at least one step (Linux, not already lowest, allowed)."""
    if not sys.platform.startswith("linux") or _nice() >= thread_priority.LOWEST:
        return False
    result = []
    probe = threading.Thread(target=lambda: result.append(thread_priority.lower_this_thread(1)))
    probe.start()
    probe.join()
    return result == [True]


lowerable = pytest.mark.skipif(not _can_lower(), reason="threads cannot be lowered here (not Linux, lowest already, or refused)")


def _expected(base: int) -> int:
    return min(thread_priority.LOWEST, base + thread_priority.BACKGROUND_NICE)


@lowerable
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
    assert seen == {"lowered": True, "delta": min(3, thread_priority.LOWEST - main_before)}
    assert _nice() == main_before  # the caller's own thread is untouched


@lowerable
def test_the_prefetch_thread_decodes_at_a_lower_priority():
    main_nice = _nice()
    seen = []

    def prepare(frame: Frame) -> None:
        seen.append(_nice())

    frames = [Frame(source="not decoded: prepare only records")]
    for _batch in prefetch(batched(frames, 1), depth=1, prepare=prepare):
        pass
    assert seen == [_expected(main_nice)]


@lowerable
def test_later_models_load_at_a_lower_priority():
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
    assert Recording.load_nice == _expected(main_nice)


def _in_a_thread(function):
    result = []
    worker = threading.Thread(target=lambda: result.append((function(), _nice())))
    worker.start()
    worker.join()
    return result[0]


def test_no_increment_changes_nothing():
    before = _nice()
    assert _in_a_thread(lambda: thread_priority.lower_this_thread(0)) == (False, before)


def test_a_refused_call_changes_nothing_and_does_not_raise(monkeypatch):
    def refused(*args):
        raise PermissionError("not allowed here")

    monkeypatch.setattr(os, "setpriority", refused)
    before = _nice()
    assert _in_a_thread(thread_priority.lower_this_thread) == (False, before)


def test_nothing_is_done_off_linux(monkeypatch):
    called = []
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(os, "setpriority", lambda *args: called.append(args))
    assert thread_priority.lower_this_thread() is False
    assert called == []


def test_a_failing_lowering_does_not_stop_the_prefetch(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("broken")

    monkeypatch.setattr(thread_priority, "lower_this_thread", broken)
    frames = [Frame(source="a"), Frame(source="b")]
    with pytest.raises(RuntimeError, match="broken"):  # handed to the consumer, not a hang
        for _batch in prefetch(batched(frames, 1), depth=1, prepare=lambda frame: None):
            pass
