"""Later stages' models loading in the background while the first stage computes
(recognize.engines.background_load, through the local engine and the runner)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from recognize import Frame, Stage, StageParams, Tag
from recognize.engines.background_load import ENV, BackgroundLoads
from recognize.engines.base import is_load_failure
from recognize.engines.local import LocalEngine
from recognize.engines.timing import LOAD, LOAD_WAIT, RELEASE, StageTimer
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
