"""A chain's later models load on one background thread while its first stage computes.

Why: in `recognize run recipes/tag_ground_segment.yaml` the models are RAM++ -> Grounding DINO ->
SAM; loading all three before the first photo costs the user the sum (imports of transformers,
building and mapping each model) before anything runs. Loading only the first stage's model,
then the others one after another on a background thread *in chain order*, lets RAM++ run on
the first photo meanwhile; a stage waits for its model only when the first batch reaches it.

What stays as before:
- pre-flight: every stage's model files are checked (or downloaded) before anything loads or
  runs (`LocalEngine.load`), so an offline run still names every missing file in one error;
- a load that fails in the background is raised in the thread that waits for that stage (or a
  later one), as the same exception the loading itself raised, marked by `mark_load_failure`
  so the runner treats it like a failure before the run started (no output left behind);
- a run leaves no loading behind: when it ends, also early (every image unreadable, a stage that
  stopped the run), `stop()` starts no further load and waits (at most `STOP_WAIT_SECONDS`) for
  the one under way, so no load is still writing to stderr or running native code while the
  runner writes `summary.json` and the interpreter exits (a daemon thread inside native code at
  finalization can crash an interpreter whose run succeeded). Ctrl-C does not wait: the thread is
  a daemon, and a waiting `wait()` can be interrupted like any lock.

Cost: the background thread takes a core and, in Python code (imports), the GIL, while the first
stage computes; on Linux it runs at a lower scheduling priority (`recognize.thread_priority`), so
it mostly takes what the computing stage leaves; measured in `benchmarks/README.md`.
`RECOGNIZE_BACKGROUND_LOAD=0` turns it off.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from recognize import resident_weights, thread_priority
from recognize.engines.base import mark_load_failure
from recognize.stage import Stage

__all__ = ["ENV", "STOP_WAIT_SECONDS", "BackgroundLoads", "enabled"]

#: set to 0 to load every stage's model before the first image (no loading beside compute)
ENV = "RECOGNIZE_BACKGROUND_LOAD"

#: how long `stop()` waits for the load under way at the end of a run (a released model loads in
#: seconds, memory-mapped; a load stuck longer is left to the daemon thread rather than hang the exit)
STOP_WAIT_SECONDS = 60.0


def enabled() -> bool:
    """Whether background loading is on (`RECOGNIZE_BACKGROUND_LOAD`, default on)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class BackgroundLoads:
    """Loads `stages` (`Stage.ensure_loaded`) one after another on one daemon thread; `wait(stage)`
    blocks until that stage's model is loaded and raises the load error that stopped the thread at
    or before it; `stop()` ends the loading at the end of a run.

    Seconds: `seconds()` is the thread's loading time so far (a load under way included);
    `waited()` the part of it some other thread spent blocked in `wait()` or `stop()` (timed by
    the caller as `load_wait`); `beside()` = `seconds() - waited()`, the loading that ran while the
    run did other work (`summary.json`'s `overlapped.load`, never counted twice with `load_wait`)."""

    def __init__(self, stages: Sequence[Stage], clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock  # the run timer's: `waited()` and its `load_wait` are the same seconds
        self._stages = list(stages)
        self._index = {id(stage): i for i, stage in enumerate(self._stages)}
        self._done = [threading.Event() for _ in self._stages]
        self._failed: tuple[int, BaseException] | None = None
        self._cancelled = threading.Event()
        self._seconds = 0.0  # finished loads
        self._loading_since: float | None = None  # the clock when the load under way began
        self._waited = 0.0  # other threads blocked in wait()/stop() while the thread loaded
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._load_all, name="recognize-background-load", daemon=True)

    def start(self) -> BackgroundLoads:
        self._thread.start()
        return self

    def __contains__(self, stage: object) -> bool:
        return id(stage) in self._index

    def is_ready(self, stage: Stage) -> bool:
        """Whether `wait(stage)` would return (or raise) at once."""
        return self._done[self._index[id(stage)]].is_set()

    def wait(self, stage: Stage) -> None:
        """Block until `stage` is loaded; re-raise the load error of it or of a stage before it."""
        index = self._index[id(stage)]
        done = self._done[index]
        if not done.is_set():
            start = self._clock()
            try:
                done.wait()
            finally:
                self._add_waited(self._clock() - start)
        failed = self._failed
        if failed is not None and failed[0] <= index:
            raise failed[1]
        stage.ensure_loaded()  # loaded already; or, after cancel(), loaded here as without this class

    def seconds(self) -> float:
        with self._lock:
            since = self._loading_since
            return self._seconds + (self._clock() - since if since is not None else 0.0)

    def waited(self) -> float:
        with self._lock:
            return self._waited

    def beside(self) -> float:
        """Loading seconds that overlapped other work: `seconds()` less what was waited for."""
        return max(0.0, self.seconds() - self.waited())

    def cancel(self) -> None:
        """Start no further load (the one under way finishes on its own; the thread is a daemon)."""
        self._cancelled.set()

    def stop(self, timeout: float | None = STOP_WAIT_SECONDS) -> bool:
        """`cancel()`, then wait up to `timeout` seconds (None: no limit; 0: not at all) for the
        load under way. Returns whether the thread has ended."""
        self.cancel()
        thread = self._thread
        if thread.is_alive() and thread is not threading.current_thread() and (timeout is None or timeout > 0):
            start = self._clock()
            try:
                thread.join(timeout)
            finally:
                self._add_waited(self._clock() - start)
        return not thread.is_alive()

    def _add_waited(self, seconds: float) -> None:
        with self._lock:
            self._waited += seconds

    def _load_all(self) -> None:
        try:
            thread_priority.lower_this_thread()  # the first stage computes meanwhile: it keeps the cores
            for i, stage in enumerate(self._stages):
                if self._cancelled.is_set():
                    return
                with self._lock:
                    self._loading_since = start = self._clock()
                try:
                    with resident_weights.loading():  # no weight pages unmapped under a load
                        stage.ensure_loaded()
                except BaseException as exc:  # noqa: BLE001 - raised again where the stage is waited for
                    self._failed = (i, mark_load_failure(exc))
                    return
                finally:
                    with self._lock:
                        self._seconds += self._clock() - start
                        self._loading_since = None
                self._done[i].set()
        finally:
            for done in self._done:  # failed or cancelled: nobody waits forever
                done.set()
