"""recognize.testing: the contract checks pass good stages and catch each broken rule.

The good stages are the core's deterministic test stages (tests/support/teststages.py); each broken
one below breaks exactly one rule, so each check is shown to fail for the reason it names.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

import teststages
from recognize import Frame, Region, Stage, StageParams, Tag
from recognize.atomic import write_text
from recognize.outputs.json_output import JsonOutput
from recognize.stage import OutputStage
from recognize.testing import (
    ContractViolation,
    check_batch_independence,
    check_frames,
    check_output,
    check_params,
    check_stage,
    sample_frames,
)


def tagged_frames() -> list[Frame]:
    return teststages.CenterBox()(teststages.Brightness()(sample_frames()))


@pytest.mark.parametrize("factory, frames", [
    (teststages.Brightness, None),
    (lambda: teststages.Brightness(cutoff=100.0), None),
    (teststages.CenterBox, "tagged"),
    (teststages.BoxMask, "tagged"),
    (teststages.CountDataset, None),
])
def test_the_core_test_stages_keep_the_contract(factory, frames):
    given = tagged_frames() if frames == "tagged" else None
    out = check_stage(factory, given)
    assert len(out) == 3


def test_the_frames_come_back_processed():
    out = check_stage(teststages.BoxMask, tagged_frames())
    assert all(region.mask is not None and region.mask.shape == (f.height, f.width)
               for f in out for region in f.regions)


# -- stages that each break one rule ---------------------------------------------------------------
class BatchMean(Stage):
    """Scores each image against the batch's mean brightness: depends on its neighbours."""

    name = "batch_mean"
    kind = "tagger"

    def process(self, frames):
        mean = np.mean([f.image.mean() for f in frames])
        for frame in frames:
            frame.tags.append(Tag(name="x", score=float(frame.image.mean() / (mean + 1))))
        return frames


class Reversing(Stage):
    name = "reversing"
    kind = "filter"

    def process(self, frames):
        return frames[::-1]


class Copying(Stage):
    name = "copying"
    kind = "filter"

    def process(self, frames):
        return [frame.model_copy() for frame in frames]


class LooseParams(Stage):
    name = "loose"
    kind = "filter"

    class Params(BaseModel):  # not StageParams: unknown keys are ignored
        level: int = 1

    def process(self, frames):
        return frames


class OrphanRegions(Stage):
    name = "orphan"
    kind = "localizer"

    def process(self, frames):
        for frame in frames:
            frame.regions.append(Region(box=(0, 0, 2, 2), tag="not-a-frame-tag"))
        return frames


class SmallMasks(Stage):
    name = "small_masks"
    kind = "segmenter"

    def process(self, frames):
        for frame in frames:
            for region in frame.regions:
                region.mask = np.ones((8, 8), bool)
        return frames


class MeanPrepare(Stage):
    """Tags the mean pixel value, made ahead; the subclasses get `prepare` wrong one way each."""

    name = "mean_prepare"
    kind = "tagger"
    ahead_key, ahead_scale = "mean", 1.0

    def prepare(self, frame):
        frame.prepare_ahead(self.ahead_key, lambda image: float(image.mean()) * self.ahead_scale)

    def process(self, frames):
        for frame in frames:
            frame.tags.append(Tag(name="x", score=frame.prepared("mean", lambda image: float(image.mean())) / 255))
        return frames


class StalePrepare(MeanPrepare):
    """Its input made ahead is not what `process` makes itself (another scale)."""

    name = "stale_prepare"
    ahead_scale = 0.5


class UnreadPrepare(MeanPrepare):
    """Keeps its input under a key `process` never reads (the input is made twice)."""

    name = "unread_prepare"
    ahead_key = "average"


class MeddlingPrepare(Stage):
    """`prepare` writes a result on the frame instead of only making an input."""

    name = "meddling_prepare"
    kind = "filter"

    def prepare(self, frame):
        frame.meta["prepared"] = True

    def process(self, frames):
        return frames


class ResultReadingPrepare(Stage):
    """Its input depends on the frame's tags, which in a chain no earlier stage has written when the
    prefetch thread prepares: such an input must be made in `process` only."""

    name = "result_reading_prepare"
    kind = "filter"

    @staticmethod
    def _make(frame):
        return lambda image: float(image.mean()) * (2 if frame.tags else 1)

    def prepare(self, frame):
        frame.prepare_ahead("mean", self._make(frame))

    def process(self, frames):
        for frame in frames:
            frame.meta["mean"] = frame.prepared("mean", self._make(frame))
        return frames


class SkippingPrepare(MeanPrepare):
    """Prepares every frame but reads only the tagged ones' inputs (as SAM skips frames without regions)."""

    name = "skipping_prepare"

    def process(self, frames):
        super().process([frame for frame in frames if frame.tags])
        return frames


class FailingPrepare(Stage):
    """Its `prepare` raises (the engines would only log it)."""

    name = "failing_prepare"
    kind = "filter"

    def prepare(self, frame):
        raise RuntimeError("reads a model that is not there")

    def process(self, frames):
        return frames


class PlainWrite(OutputStage):
    name = "plain_write"

    def files(self, frame, out_dir):
        return [Path(out_dir) / f"{frame.name}.txt"]

    def write(self, frame, out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.files(frame, out_dir)[0].write_text(",".join(frame.tag_names))


class Timestamped(OutputStage):
    name = "timestamped"

    def finish(self, frames, out_dir):
        write_text(Path(out_dir) / "report.json", json.dumps({"written": time.perf_counter_ns()}))


class Forgetful(OutputStage):
    name = "forgetful"

    def files(self, frame, out_dir):
        return [Path(out_dir) / f"{frame.name}.txt", Path(out_dir) / f"{frame.name}.extra"]

    def write(self, frame, out_dir):
        write_text(self.files(frame, out_dir)[0], frame.name)


class Meddling(OutputStage):
    name = "meddling"

    def write(self, frame, out_dir):
        frame.caption = "written"


class TornLog(OutputStage):
    """An append-only log that writes the line break before each record: its file ends torn."""

    name = "torn_log"
    append_only = True

    def write(self, frame, out_dir):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with (Path(out_dir) / "log.jsonl").open("a") as handle:
            handle.write("\n" + json.dumps({"name": frame.name}))


def test_a_stage_that_prepares_its_input_right_keeps_the_contract():
    check_stage(MeanPrepare)
    check_stage(SkippingPrepare, tagged_frames()[:1] + sample_frames()[1:])  # unread inputs of skipped frames are fine


@pytest.mark.parametrize("stage, frames, rule", [
    (BatchMean, None, "vs one by one"),
    (Reversing, None, "in order"),
    (Copying, None, "in order"),
    (OrphanRegions, None, "not one of the frame's tags"),
    (SmallMasks, "tagged", "masks have the frame's size"),
    (PlainWrite, "tagged", "recognize.atomic"),
    (Timestamped, None, "idempotent"),
    (Forgetful, None, "did not write"),
    (Meddling, None, "must not change the frames"),
    (TornLog, None, "torn records"),
    (StalePrepare, None, "inputs made ahead"),
    (MeddlingPrepare, None, "must not change a frame's results"),
    (UnreadPrepare, None, "did not read"),
    (ResultReadingPrepare, "tagged", "inputs made ahead"),
    (FailingPrepare, None, "prepare\\(\\) raised RuntimeError"),
])
def test_each_broken_rule_is_caught_and_named(stage, frames, rule):
    given = tagged_frames() if frames == "tagged" else None
    with pytest.raises(ContractViolation, match=rule):
        check_stage(stage, given)


def test_unknown_parameters_must_be_rejected():
    with pytest.raises(ContractViolation, match="Params` must subclass"):
        check_params(LooseParams)


@pytest.mark.parametrize("attribute, value, rule", [
    ("name", "", "non-empty string `name`"),
    ("kind", "detector", "`kind` must be one of"),
    ("scope", "batch", "`scope` must be one of"),
])
def test_class_attributes_are_checked(attribute, value, rule):
    broken = type("Broken", (teststages.Brightness,), {attribute: value})
    with pytest.raises(ContractViolation, match=rule):
        check_params(broken)


def test_an_output_kind_without_the_output_base_is_caught():
    broken = type("Broken", (teststages.Brightness,), {"kind": "output"})
    with pytest.raises(ContractViolation, match="subclasses OutputStage"):
        check_params(broken)


def test_check_frames_catches_boxes_outside_the_image():
    frame = sample_frames()[0]
    frame.tags = [Tag(name="a")]
    frame.regions = [Region(box=(0, 0, frame.width + 5, 4), tag="a")]
    with pytest.raises(ContractViolation, match="outside"):
        check_frames([frame], "test")


def test_a_dataset_stage_is_checked_for_order_only():
    out = check_batch_independence(teststages.CountDataset(), sample_frames())
    assert [f.meta["dataset_size"] for f in out] == [3, 3, 3]


def test_the_json_output_is_atomic_and_idempotent(tmp_path):
    frames = tagged_frames()
    check_output(JsonOutput(), frames, tmp_path)
    written = [path for frame in frames for path in JsonOutput().files(frame, tmp_path / "out")]
    assert len(written) == 3 and all(path.is_file() for path in written)
    assert not [p for p in (tmp_path / "crashed").rglob("*") if p.is_file()]


def test_params_rebuild_from_describe():
    check_params(teststages.Brightness, cutoff=10.0, batch_size=2)


@pytest.mark.subprocess
def test_the_pytest_plugin_gives_the_fixtures(tmp_path):
    """A plugin's test file uses the fixtures exactly as the entry point installs them."""
    import os
    import subprocess
    import sys

    (tmp_path / "test_mine.py").write_text(
        "from recognize import Frame, Stage, Tag\n"
        "class Gray(Stage):\n"
        "    name = 'gray'\n"
        "    kind = 'tagger'\n"
        "    def process(self, frames):\n"
        "        for f in frames:\n"
        "            f.tags.append(Tag(name='gray', score=float(f.image.std() < 10)))\n"
        "        return frames\n"
        "def test_contract(check_stage, sample_frames):\n"
        "    out = check_stage(Gray, sample_frames)\n"
        "    assert [t.name for f in out for t in f.tags] == ['gray'] * 3\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # `-p` loads the plugin by module name; when the entry point is installed it is already loaded
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "recognize.testing.plugin",
                             "-p", "no:cacheprovider", str(tmp_path / "test_mine.py")],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
