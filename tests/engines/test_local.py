"""The local engine, the segment walk and the batch failure policy (recognize.engines.*)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from resident import resident_kib

from recognize import Frame, Stage, StageParams, Tag
from recognize.engines.base import Engine, RunStopped
from recognize.engines.local import LocalEngine
from recognize.engines.ray_engine import RayEngine
from recognize.engines.segments import split_segments
from recognize.engines.timing import RELEASE, RETRIED, StageTimer
from recognize.pipeline import Pipeline
from recognize.runner import run_to_folder


class FakeClock:
    """Time that moves only when a stage says so: timings are checked without a wall clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = FakeClock()


class Tick(Stage):
    """Costs one clock second per frame and tags each frame once."""

    name = "tick"
    kind = "tagger"

    def process(self, frames):
        CLOCK.now += len(frames)
        for frame in frames:
            frame.tags.append(Tag(name="ticked"))
        return frames


class FailOn(Stage):
    """Raises `error` for a batch holding a frame whose source contains `on` ("" = every frame)."""

    name = "fail_on"
    kind = "filter"

    class Params(StageParams):
        on: str = "boom"
        error: str = "runtime"  # runtime | type | memory
        max_frames: int = 0  # with error=memory: fail only batches larger than this

    def __init__(self, params=None, **kwargs):
        super().__init__(params, **kwargs)
        self.batch_sizes: list[int] = []

    def process(self, frames):
        self.batch_sizes.append(len(frames))
        p = self.params
        if p.error == "memory":
            if len(frames) > p.max_frames:
                raise MemoryError("cannot allocate")
            return frames
        if any(p.on in frame.source for frame in frames):
            if p.error == "type":
                raise TypeError("process() got an unexpected keyword argument 'x'")
            raise RuntimeError("exploded on purpose")
        return frames


class CountCalls(Stage):
    """Counts the frames it is given (checks what a resumed run recomputes)."""

    name = "count_calls"
    kind = "filter"
    seen: list[str] = []

    def process(self, frames):
        CountCalls.seen.extend(frame.name or "" for frame in frames)
        return frames


class DatasetSize(Stage):
    name = "dataset_size"
    kind = "filter"
    scope = "dataset"

    def process(self, frames):
        for frame in frames:
            frame.meta["dataset_size"] = len(frames)
        return frames


def frames(*sources: str) -> list[Frame]:
    return [Frame.from_array(np.full((4, 4, 3), 100, np.uint8), source=s, name=s) for s in sources]


def test_both_engines_meet_the_protocol():
    assert isinstance(LocalEngine(), Engine) and isinstance(RayEngine(), Engine)


def test_segments_group_consecutive_scopes_and_no_stages_is_one_empty_segment():
    segments = split_segments([Tick(), FailOn(), DatasetSize(), Tick()])
    assert [(s.scope, [x.name for x in s.stages], s.last) for s in segments] == [
        ("image", ["tick", "fail_on"], False), ("dataset", ["dataset_size"], False), ("image", ["tick"], True)]
    (empty,) = split_segments([])
    assert empty.scope == "image" and empty.stages == [] and empty.last


def test_no_stages_reads_images_and_reports_unreadable_ones(image_folder):
    (image_folder / "broken.jpg").write_bytes(b"nope")
    from recognize.images import expand_inputs

    todo = [Frame(source=str(path), name=name) for path, name in expand_inputs([image_folder])]
    results = list(LocalEngine().run(Pipeline([]), todo))
    assert sorted((r.frame.name, r.ok) for r in results) == [
        ("black.jpg", True), ("broken.jpg", False), ("sub/noise.png", True), ("white.png", True)]


def test_one_bad_image_costs_only_itself_and_names_the_stage():
    pipeline = Pipeline([Tick(), FailOn(on="boom")], batch_size=4)
    results = list(LocalEngine().run(pipeline, frames("a", "boom", "b", "c")))
    assert [(r.frame.name, r.error) for r in results] == [
        ("a", None), ("boom", "fail_on: RuntimeError: exploded on purpose"), ("b", None), ("c", None)]
    assert [t.name for t in results[0].frame.tags] == ["ticked"]  # restored before the retry: not tagged twice


def test_an_error_on_every_image_of_a_batch_stops_the_run_once():
    failing = FailOn(on="", error="type")
    pipeline = Pipeline([Tick(), failing], batch_size=3)
    seen = []
    with pytest.raises(RunStopped, match=r"'fail_on' failed on each of the 3 images.*TypeError: process\(\) got"):
        list(LocalEngine().run(pipeline, frames("a", "b", "c", "d", "e", "f"), on_result=seen.append))
    assert seen == [] and failing.batch_sizes == [3, 1, 1, 1]  # stopped after the first batch


def test_out_of_memory_splits_the_batch_instead_of_going_image_by_image():
    oom = FailOn(error="memory", max_frames=2)
    results = list(LocalEngine().run(Pipeline([oom], batch_size=4), frames("a", "b", "c", "d")))
    assert all(r.ok for r in results) and oom.batch_sizes == [4, 2, 2]


def test_out_of_memory_on_single_images_stops_with_a_hint():
    oom = FailOn(error="memory", max_frames=0)
    with pytest.raises(RunStopped, match="out of memory even one image at a time"):
        list(LocalEngine().run(Pipeline([oom], batch_size=4), frames("a", "b", "c", "d")))
    assert oom.batch_sizes == [4, 2, 1, 1]


def test_retries_are_timed_once():
    CLOCK.now = 0.0
    timer = StageTimer(clock=CLOCK)
    pipeline = Pipeline([Tick(), FailOn(on="boom")], batch_size=4)
    results = list(LocalEngine().run(pipeline, frames("a", "boom", "b", "c"), timer=timer))
    assert sum(r.ok for r in results) == 3
    # batch of 4 (4 s, failed) + the boom image alone (1 s, failed) are written off once;
    # the stage is charged for the three single-image attempts it produced results in
    assert timer.stages["tick"] == 3.0 and timer.phases[RETRIED] == 5.0
    assert timer.total == CLOCK.now == 8.0


def test_releasing_idle_weights_between_stages_is_timed_as_its_own_phase(monkeypatch):
    from recognize import resident_weights

    def release():  # the real one unmaps pages; here it only costs two clock seconds
        CLOCK.now += 2.0
        return resident_weights.ReleaseReport()

    monkeypatch.setattr(resident_weights, "release", release)
    CLOCK.now = 0.0
    timer = StageTimer(clock=CLOCK)
    list(LocalEngine().run(Pipeline([Tick(), CountCalls()], batch_size=2), frames("a", "b"), timer=timer))
    # a chain of two: released after each stage, counted there, never in the stage before it
    assert timer.stages["tick"] == 2.0 and timer.stages["count_calls"] == 0.0
    assert timer.phases[RELEASE] == 4.0 and timer.total == CLOCK.now


def test_failed_frames_never_reach_a_dataset_stage_and_survivors_keep_input_order():
    pipeline = Pipeline([FailOn(on="boom"), DatasetSize(), Tick()], batch_size=2)
    results = list(LocalEngine().run(pipeline, frames("a", "boom", "b")))
    assert [(r.frame.name, r.ok) for r in results] == [("boom", False), ("a", True), ("b", True)]
    assert [r.frame.meta.get("dataset_size") for r in results] == [None, 2, 2]


def test_a_rerun_reuses_the_checkpoint_in_front_of_a_dataset_stage(tmp_path):
    CountCalls.seen = []
    pipeline = Pipeline([CountCalls(), DatasetSize()], batch_size=2)
    first = [r.frame.meta for r in LocalEngine().run(pipeline, frames("a", "b", "c"), checkpoint_dir=tmp_path)]
    assert CountCalls.seen == ["a", "b", "c"] and sorted(p.name for p in (tmp_path / "segment0").iterdir()) == [
        "a.json", "b.json", "c.json"]
    again = [r.frame.meta for r in LocalEngine().run(pipeline, frames("a", "b", "c"), checkpoint_dir=tmp_path)]
    assert CountCalls.seen == ["a", "b", "c"] and again == first


def test_pipeline_call_is_strict_and_raises_the_stage_error():
    with pytest.raises(RuntimeError, match="exploded on purpose"):
        Pipeline([FailOn(on="boom")])(frames("boom"))


def test_runner_stops_with_one_message_and_summary_accounts_for_wall_time(test_stages, image_folder, tmp_path):
    with pytest.raises(RunStopped):
        run_to_folder(Pipeline([test_stages.Explode(on="")], batch_size=3), [image_folder], tmp_path / "x", quiet=True)
    summary = run_to_folder(Pipeline([test_stages.Brightness()]), [image_folder], tmp_path / "out", quiet=True,
                            startup_seconds=0.5)
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    wall = data["wall"]
    assert set(wall) >= {"startup", "prepare", "load", "decode", "stages", "write", "finish", "retried", "other"}
    assert wall["startup"] == 0.5 and wall["stages"] == pytest.approx(data["timings"]["brightness"]["seconds"], abs=1e-3)
    assert sum(wall.values()) == pytest.approx(summary.seconds, abs=0.01)
    # cold start: process start (here the 0.5 s passed in) until the first stage began, so it holds the
    # start-up and the load, and none of the stage's own time
    assert wall["startup"] + wall["load"] <= data["cold_start"] <= summary.seconds - wall["stages"] + 0.01


def test_the_summary_counts_the_inputs_preparation(test_stages, image_folder, tmp_path, monkeypatch):
    """Listing the inputs and checking them against OUT (claims, the journal) happen before the first
    model loads; for a million inputs they take seconds. They are in the run's seconds, as `prepare`
    (until 2026-12-03 `seconds` began after them, while `cold_start` counted them: a loaded machine
    showed a cold start longer than the run)."""
    import time

    from recognize import runner

    check_claims, is_done = runner.check_claims, runner._is_done
    slowed: list[str] = []

    def slow(check, seconds):
        def slowly(*args, **kwargs):
            if check.__name__ not in slowed:  # what many inputs cost, without making them
                slowed.append(check.__name__)
                time.sleep(seconds)
            return check(*args, **kwargs)
        return slowly

    # checking the claims on OUT, then finding which inputs are done (a resume's journal lookups); the
    # second is the longer, so the first plus the run's own overheads (imports: ~0.2 s) cannot pass for both
    monkeypatch.setattr(runner, "check_claims", slow(check_claims, 0.3))
    monkeypatch.setattr(runner, "_is_done", slow(is_done, 1.0))
    summary = run_to_folder(Pipeline([test_stages.Brightness()]), [image_folder], tmp_path / "out", quiet=True)
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    wall = data["wall"]
    assert slowed == ["check_claims", "_is_done"]
    assert wall["prepare"] >= 1.3
    assert summary.seconds >= wall["prepare"] + wall["stages"]
    assert sum(wall.values()) == pytest.approx(summary.seconds, abs=0.01)
    assert wall["prepare"] <= data["cold_start"] <= summary.seconds - wall["stages"] + 0.01


@pytest.mark.subprocess
def test_cli_stops_with_one_line_and_the_summary_counts_start_up(image_folder, tmp_path):
    import subprocess
    import sys

    from clihelp import cli_env

    def recognize(recipe: str, out):
        path = tmp_path / "recipe.yaml"
        path.write_text(recipe)
        return subprocess.run([sys.executable, "-m", "recognize", "run", str(path), str(image_folder), "-o", str(out),
                               "--quiet"], capture_output=True, text=True, env=cli_env(), timeout=300, check=False)

    stopped = recognize("recipe: 1\nsettings: {batch_size: 3}\nstages:\n  - use: explode\n    with: {'on': ''}\n",
                        tmp_path / "a")
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert stopped.stderr.count("exploded on purpose") == 1 and "failed on each of the 3 images" in stopped.stderr
    done = recognize("recipe: 1\nstages: []\noutputs:\n  - use: json\n", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    wall = json.loads((tmp_path / "b" / "summary.json").read_text())["wall"]
    assert wall["startup"] > 0  # the interpreter and imports before the run, measured from the process's start


class MappedWeights(Stage):
    """Reads every page of a memory-mapped checkpoint per batch (as a model's forward does) and
    records how much of it is resident when it starts: a stage's weights between batches."""

    name = "mapped_weights"
    kind = "filter"

    class Params(StageParams):
        checkpoint: str

    def load(self):
        from recognize.weights_file import read_weights

        self.weights = read_weights(self.params.checkpoint)["w"]
        self.resident_at_start: list[int] = []

    def process(self, frames):
        self.resident_at_start.append(resident_kib(self.params.checkpoint))
        for frame in frames:
            frame.meta[f"weights_sum_{Path(self.params.checkpoint).stem}"] = float(self.weights.sum())
        return frames


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="madvise / smaps are Linux's")
@pytest.mark.parametrize("chain", ["alone", "with a weightless stage", "with another model"])
def test_a_chains_stage_leaves_its_weight_pages_out_of_rss_between_batches(tmp_path, chain, monkeypatch):
    import torch

    from recognize import resident_weights

    monkeypatch.setattr(resident_weights, "_mapped", [])  # only this test's files count as models

    path, other = tmp_path / "w.pth", tmp_path / "other.pth"
    torch.save({"w": torch.arange(2_000_000, dtype=torch.float32)}, path)  # 8 MB
    torch.save({"w": torch.ones(1_000_000)}, other)
    stage = MappedWeights({"checkpoint": str(path)})
    stages = {"alone": [stage], "with a weightless stage": [stage, Tick()],
              "with another model": [stage, MappedWeights({"checkpoint": str(other)})]}[chain]
    results = list(LocalEngine().run(Pipeline(stages, batch_size=1), frames("a", "b", "c")))

    expected = float(torch.arange(2_000_000, dtype=torch.float32).sum())
    assert [r.frame.meta["weights_sum_w"] for r in results] == [expected] * 3  # the same values every batch
    later = stage.resident_at_start[1:]  # each earlier batch read all 8 MB
    if chain == "with another model":  # another model's weights ran between: pages unmapped, page cache keeps them
        assert all(kib < 1_000 for kib in later)
    else:  # nothing else competes for memory: unmapping would only cost faults, the weights stay resident
        assert all(kib >= 7_000 for kib in later)


def test_the_wait_for_the_photos_decoded_ahead_is_decode_and_the_rest_overlapped(test_stages, image_folder, tmp_path,
                                                                                 monkeypatch):
    """The local engine hands its timer to the prefetch thread's consumer: waiting for a batch's photos is
    `decode` in summary.json (it was `other`), their decoding beside the stages `overlapped.decode`."""
    import time

    from recognize import prefetch as prefetch_module

    real_decode = prefetch_module.decode

    def slow_decode(frame):
        time.sleep(0.15)
        real_decode(frame)

    monkeypatch.setattr(prefetch_module, "decode", slow_decode)
    images = sorted(p for p in image_folder.iterdir() if p.is_file())
    assert len(images) >= 2
    summary = run_to_folder(Pipeline([test_stages.Brightness()], batch_size=1), [image_folder], tmp_path / "out",
                            quiet=True)
    data = json.loads((tmp_path / "out" / "summary.json").read_text())
    # the first photo is always waited for; every photo's 0.15 s is counted once, as one or the other
    assert data["wall"]["decode"] >= 0.14
    assert 0.15 * len(images) - 0.02 <= data["wall"]["decode"] + data["overlapped"].get("decode", 0.0)
    assert data["wall"]["other"] < 0.15
    assert sum(data["wall"].values()) == pytest.approx(summary.seconds, abs=0.01)
