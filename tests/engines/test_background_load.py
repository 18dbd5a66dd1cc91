"""Later stages' models loading in the background while the first stage computes
(recognize.engines.background_load, through the local engine and the runner)."""

from __future__ import annotations

import json
import linecache
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from recognize import Frame, Stage, StageParams, Tag
from recognize.engines.background_load import ENV, BackgroundLoads
from recognize.engines.base import is_load_failure
from recognize.engines.local import LocalEngine
from recognize.engines.timing import LOAD, LOAD_WAIT, RELEASE, RETRIED, StageTimer
from recognize.errors import ModelFileError
from recognize.pipeline import Pipeline
from recognize.runner import run_to_folder


class First(Stage):
    """The chain's first stage: tags each frame and says when it has run on a batch."""

    name = "first"
    kind = "tagger"

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.ran = threading.Event()
        self.load_thread: str | None = None

    def load(self) -> None:
        self.load_thread = threading.current_thread().name

    def process(self, frames):
        for frame in frames:
            frame.tags.append(Tag(name="first"))
            frame.meta.setdefault("order", []).append(self.name)
        self.ran.set()
        return frames


class NeedsFirstToRun(Stage):
    """A later stage whose load finishes only once `first` has run on a batch: with every model
    loaded before the first image, its load would give up (so the test proves the overlap
    without measuring any time)."""

    name = "later"
    kind = "filter"

    class Params(StageParams):
        label: str = "later"

    def __init__(self, first: First | None = None, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.first = first
        self.load_thread: str | None = None
        self.loaded_after_first_ran: bool | None = None

    def load(self) -> None:
        self.load_thread = threading.current_thread().name
        if self.first is not None:
            self.loaded_after_first_ran = self.first.ran.wait(timeout=60)

    def process(self, frames):
        for frame in frames:
            frame.meta.setdefault("order", []).append(self.params.label)
        return frames


class BadLoad(Stage):
    """Its model fails to load (a corrupt checkpoint past the pre-flight file check)."""

    name = "bad_load"
    kind = "filter"

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.processed = 0

    def load(self) -> None:
        raise ModelFileError("weights.pth: not a checkpoint (test double)")

    def process(self, frames):
        self.processed += len(frames)
        return frames


class Ticks:
    """A clock that moves only when told: timings checked exactly, no wall time measured."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def blocked_on_loads(thread: threading.Thread) -> bool:
    """Whether `thread` is blocked inside `BackgroundLoads.wait` or `.stop`: at the lock acquire
    of threading's own wait/join (so past the clock reading that starts the wait)."""
    frame = sys._current_frames().get(thread.ident)
    if frame is None or not frame.f_code.co_filename.endswith("threading.py"):
        return False
    if "acquire(" not in linecache.getline(frame.f_code.co_filename, frame.f_lineno):
        return False
    while frame is not None:
        code = frame.f_code
        if code.co_filename.endswith("background_load.py") and code.co_name in ("wait", "stop"):
            return True
        frame = frame.f_back
    return False


def eventually(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


class WaitedFor(Stage):
    """A later stage whose load ends only once the thread that built it is blocked waiting for it
    (so the run certainly waits, whatever the machine's speed); `ticks` moves 10 s meanwhile.
    Raises on frames whose name contains `fail_on`."""

    name = "waited_for"
    kind = "filter"

    class Params(StageParams):
        fail_on: str = "boom"

    def __init__(self, ticks: Ticks | None = None, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.ticks = ticks
        self.waiter = threading.current_thread()

    def load(self) -> None:
        if not eventually(lambda: blocked_on_loads(self.waiter)):
            raise RuntimeError("nobody waited for this load")
        if self.ticks is not None:
            self.ticks.advance(10.0)

    def process(self, frames):
        if any(self.params.fail_on in (frame.name or "") for frame in frames):
            raise RuntimeError("failed on purpose")
        return frames


class Held(Stage):
    """A later stage whose load holds until `release` is set (a load still under way)."""

    name = "held"
    kind = "filter"

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.release = threading.Event()
        self.loading = threading.Event()
        self.loads = 0

    def load(self) -> None:
        self.loading.set()
        self.loads += 1
        self.release.wait(timeout=60)

    def process(self, frames):
        return frames


def loader_threads(besides: list[threading.Thread] = ()) -> list[threading.Thread]:
    """The live background-load threads, other than `besides` (started before the test)."""
    return [t for t in threading.enumerate() if t.name == "recognize-background-load" and t not in besides]


def frames(*names: str) -> list[Frame]:
    return [Frame.from_array(np.full((4, 4, 3), 100, np.uint8), source=n, name=n) for n in names]


def run(pipeline: Pipeline, engine: LocalEngine, names=("a", "b", "c")) -> list:
    timer = StageTimer()
    engine.load(pipeline, timer)
    return [r.frame for r in engine.run(pipeline, frames(*names), timer=timer)]


def test_later_models_load_beside_the_first_stage_and_the_outputs_are_the_same():
    first = First()
    later = NeedsFirstToRun(first)
    last = NeedsFirstToRun(label="last")
    pipeline = Pipeline([first, later, last], batch_size=2)
    out = run(pipeline, LocalEngine(background_load=True))
    assert later.loaded_after_first_ran is True  # it loaded while the first stage ran
    assert first.load_thread == threading.current_thread().name
    assert later.load_thread == last.load_thread == "recognize-background-load"
    assert [f.meta["order"] for f in out] == [["first", "later", "last"]] * 3

    plain = Pipeline([First(), NeedsFirstToRun(label="later"), NeedsFirstToRun(label="last")], batch_size=2)
    same = run(plain, LocalEngine(background_load=False))
    assert [(f.name, f.meta, [t.name for t in f.tags]) for f in same] == [
        (f.name, f.meta, [t.name for t in f.tags]) for f in out]


def test_library_engine_and_the_switch_load_every_model_before_returning(monkeypatch):
    assert LocalEngine(isolate=False).background_load is False  # Pipeline.load() keeps its promise
    monkeypatch.setenv(ENV, "0")
    assert LocalEngine().background_load is False
    pipeline = Pipeline([First(), NeedsFirstToRun(label="later")])
    LocalEngine().load(pipeline, StageTimer())
    assert pipeline.stages[1].load_thread == threading.current_thread().name


def test_a_background_load_error_stops_the_run_as_a_load_error():
    bad = BadLoad()
    pipeline = Pipeline([First(), bad], batch_size=2)
    engine = LocalEngine(background_load=True)
    with pytest.raises(ModelFileError, match="not a checkpoint") as raised:
        run(pipeline, engine)
    assert is_load_failure(raised.value) and bad.processed == 0
    # not an image's failure: the same error again on the next attempt, never per image
    with pytest.raises(ModelFileError):
        run(pipeline, engine)


def test_wait_raises_an_earlier_stages_error_and_cancel_leaves_no_waiter_stuck():
    first, second = BadLoad(), First()
    loads = BackgroundLoads([first, second]).start()
    with pytest.raises(ModelFileError):
        loads.wait(second)  # never loaded: the stage in front of it failed
    idle = BackgroundLoads([First()])
    idle.cancel()
    idle.start()
    stage = idle._stages[0]
    idle.wait(stage)  # cancelled before it began: loaded by the waiter itself
    assert stage.load_thread == threading.current_thread().name


def test_summary_parts_add_up_with_background_loads_and_release_has_its_own_entry(image_folder, tmp_path):
    first = First()
    pipeline = Pipeline([first, NeedsFirstToRun(first)], batch_size=2)
    summary = run_to_folder(pipeline, [image_folder], tmp_path / "out", quiet=True, startup_seconds=0.25,
                            engine=LocalEngine(background_load=True))
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    wall = data["wall"]
    assert {LOAD, LOAD_WAIT, RELEASE, "stages", "other"} <= set(wall)
    assert sum(wall.values()) == pytest.approx(summary.seconds, abs=0.01)
    assert data["overlapped"][LOAD] > 0  # the later stage's load, beside the first stage
    assert data["counts"]["processed"] == data["counts"]["inputs"] > 0
    assert wall["startup"] + wall["load"] <= data["cold_start"]


def test_summary_shows_the_wait_when_a_later_load_outlasts_the_first_stage(image_folder, tmp_path):
    pipeline = Pipeline([First(), WaitedFor()], batch_size=2)
    summary = run_to_folder(pipeline, [image_folder], tmp_path / "out", quiet=True,
                            engine=LocalEngine(background_load=True))
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert data["wall"][LOAD_WAIT] > 0  # the first batch waited for the later stage's model
    assert sum(data["wall"].values()) == pytest.approx(summary.seconds, abs=0.01)
    assert data["counts"]["processed"] == data["counts"]["inputs"] > 0


@pytest.mark.subprocess
@pytest.mark.parametrize("background", ["1", "0"])
def test_cli_background_load_failure_is_one_line_exit_3_and_leaves_no_output(image_folder, tmp_path, background):
    from clihelp import cli_env

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("recipe: 1\nstages:\n  - use: brightness\n  - use: bad_weights\n    with: {delay: 0.5}\n"
                      "outputs:\n  - use: json\n")
    out = tmp_path / "out" / "nested"
    done = subprocess.run([sys.executable, "-m", "recognize", "run", str(recipe), str(image_folder), "-o", str(out),
                           "--quiet"], capture_output=True, text=True, env=cli_env(**{ENV: background}),
                          timeout=300, check=False)
    assert done.returncode == 3, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "weights.pth: not a checkpoint (test double)" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # no manifest, no folders: as a run that could not start


# -- review 4: what the first batch's wait is booked as, the end of a run, Ctrl-C ----------------------


def test_a_wait_for_a_model_is_load_wait_even_when_the_batch_is_retried_and_is_not_counted_twice():
    """A batch whose background-loaded stage fails on one image is retried image by image; the
    first batch's wait for that stage's model stays `load_wait` (not `retried`), and
    `overlapped.load` (loading beside the run) leaves out the seconds waited for."""
    ticks = Ticks()
    pipeline = Pipeline([First(), WaitedFor(ticks)], batch_size=3)
    engine = LocalEngine(background_load=True)
    timer = StageTimer(clock=ticks)
    engine.load(pipeline, timer)
    results = list(engine.run(pipeline, frames("a", "boom", "c"), timer=timer))
    assert [r.error for r in results] == [None, "waited_for: RuntimeError: failed on purpose", None]
    assert timer.phases[LOAD_WAIT] == 10.0  # the whole 10 s load was waited for
    assert timer.phases[RETRIED] == 0.0  # the failed attempt's own seconds (none on this clock)
    assert timer.overlapped[LOAD] == 0.0  # nothing loaded beside the run: all of it was waited for


def test_the_end_of_a_run_waits_for_a_load_under_way_and_books_it_as_load_wait():
    """Every image unreadable: the run ends while a later model still loads; it stops further
    loads and waits for that one (timed as `load_wait`), so nothing loads after the run."""
    ticks = Ticks()
    first, later, after = First(), WaitedFor(ticks), First()
    pipeline = Pipeline([first, later, after], batch_size=2)
    engine = LocalEngine(background_load=True)
    timer = StageTimer(clock=ticks)
    before = loader_threads()
    engine.load(pipeline, timer)
    unreadable = [Frame(source=f"/no/such/image-{i}.jpg", name=f"gone-{i}") for i in range(2)]
    results = list(engine.run(pipeline, unreadable, timer=timer))
    assert all(r.error for r in results)
    assert not loader_threads(before)  # ended: nothing loads after the run
    assert later.loaded and not after.loaded  # no further load started
    assert timer.phases[LOAD_WAIT] == 10.0 and timer.overlapped[LOAD] == 0.0


def test_a_second_load_waits_for_the_first_ones_load_under_way():
    """`load()` again (the next run of the same engine) while a load is under way: no second
    loader thread runs beside the first one."""
    held = Held()
    pipeline = Pipeline([First(), held])
    engine = LocalEngine(background_load=True)
    before = loader_threads()
    engine.load(pipeline, StageTimer())
    assert held.loading.wait(timeout=60)
    threading.Timer(0.05, held.release.set).start()
    engine.load(pipeline, StageTimer())  # returns once the first loader has ended
    assert len(loader_threads(before)) <= 1 and held.loads == 1
    list(engine.run(pipeline, frames("a"), timer=StageTimer()))
    assert not loader_threads(before)


def test_ctrl_c_while_waiting_for_a_model_stops_at_once():
    """Ctrl-C (SIGINT) while the first batch waits for a model: the run stops with
    KeyboardInterrupt without waiting for the load under way (the daemon thread is left to it)."""
    held = Held()
    pipeline = Pipeline([First(), held])
    engine = LocalEngine(background_load=True)
    timer = StageTimer()
    before = loader_threads()
    engine.load(pipeline, timer)
    main = threading.current_thread()

    interrupted = threading.Event()

    def interrupt() -> None:  # again if a signal landed just before the lock's wait (it then waits on)
        while not interrupted.is_set() and eventually(lambda: blocked_on_loads(main) or interrupted.is_set()):
            if not interrupted.is_set():
                signal.pthread_kill(main.ident, signal.SIGINT)
            interrupted.wait(0.2)

    threading.Thread(target=interrupt, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            list(engine.run(pipeline, frames("a"), timer=timer))
        interrupted.set()
        assert len(loader_threads(before)) == 1  # still loading: not waited for
    finally:
        interrupted.set()
        held.release.set()
    for thread in loader_threads(before):
        thread.join(timeout=60)


def test_a_load_error_after_a_dataset_scope_segment_is_a_load_failure():
    from teststages import CountDataset

    bad = BadLoad()
    pipeline = Pipeline([First(), CountDataset(), bad], batch_size=2)
    with pytest.raises(ModelFileError, match="not a checkpoint") as raised:
        run(pipeline, LocalEngine(background_load=True))
    assert is_load_failure(raised.value) and bad.processed == 0


@pytest.mark.subprocess
def test_cli_run_ending_early_waits_for_the_load_under_way_and_exits_cleanly(tmp_path):
    """Every input unreadable while a later model still loads: the run waits for that load (its
    marker is written before the process ends), the exit code is 1 (failures) and stderr holds
    only the run's own lines."""
    from clihelp import cli_env

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a.jpg", "b.png"):
        (inputs / name).write_bytes(b"not an image")
    marker = tmp_path / "loaded.txt"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("recipe: 1\nstages:\n  - use: brightness\n  - use: slow_loading\n"
                      f"    with: {{delay: 1.5, marker: {json.dumps(str(marker))}}}\noutputs:\n  - use: json\n")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "recognize", "run", str(recipe), str(inputs), "-o", str(out),
                           "--quiet"], capture_output=True, text=True, env=cli_env(**{ENV: "1"}),
                          timeout=300, check=False)
    assert done.returncode == 1, done.stderr
    assert marker.read_text() == "loaded\n"  # the load ended before the process did
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 3 and all(line.startswith("skipped ") for line in lines[:2]), done.stderr
    assert lines[2].startswith("0 processed, 0 already done, 2 failed"), done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wall"][LOAD_WAIT] > 0 and summary["overlapped"][LOAD] >= 0
