"""Small deterministic stages for testing the core without model weights.

Registered as a plugin: in-process through the `test_stages` fixture, in subprocesses through
RECOGNIZE_PLUGINS=teststages (with this folder on PYTHONPATH).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

import recognize
from recognize import Frame, Region, Stage, StageParams, Tag


def _mean_pixel(image: np.ndarray) -> float:
    return float(image.mean())


class Brightness(Stage):
    """Tags `bright` or `dark` from the mean pixel value."""

    name = "brightness"
    kind = "tagger"

    class Params(StageParams):
        cutoff: float = 127.0
        device: str = "cpu"
        batch_size: int = 8
        delay: float = 0.0  # seconds per image, to make runs slow enough to interrupt

    def prepare(self, frame: Frame) -> None:
        """The mean pixel value, made ahead by the engine (as a model stage resizes ahead)."""
        frame.prepare_ahead("brightness_mean", _mean_pixel)

    def process(self, frames: list[Frame]) -> list[Frame]:
        import time

        for frame in frames:
            time.sleep(self.params.delay)
            mean = frame.prepared("brightness_mean", _mean_pixel)
            name = "bright" if mean > self.params.cutoff else "dark"
            frame.tags.append(Tag(name=name, name_zh="亮" if name == "bright" else "暗", score=mean / 255.0,
                                  index=0 if name == "bright" else 1, source=self.name))
        return frames


class CenterBox(Stage):
    """One region per tag: the central half of the image."""

    name = "center_box"
    kind = "localizer"

    class Params(StageParams):
        score: float = Field(0.9, ge=0.0, le=1.0)

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            h, w = frame.image.shape[:2]
            for tag in frame.tags:
                frame.regions.append(Region(box=(w / 4, h / 4, 3 * w / 4, 3 * h / 4), score=self.params.score,
                                            tag=tag.name, tag_zh=tag.name_zh, source=self.name))
        return frames


class BoxMask(Stage):
    """Fills each region's box as its mask."""

    name = "box_mask"
    kind = "segmenter"

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            h, w = frame.image.shape[:2]
            for region in frame.regions:
                mask = np.zeros((h, w), dtype=bool)
                x0, y0, x1, y1 = (int(round(v)) for v in region.box)
                mask[y0:y1, x0:x1] = True
                region.mask = mask
                region.mask_score = 1.0
        return frames


class Explode(Stage):
    """Raises for frames whose source contains `on` (tests that one bad image costs only itself)."""

    name = "explode"
    kind = "filter"

    class Params(StageParams):
        on: str = "boom"

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            frame.meta["explode_seen"] = frame.meta.get("explode_seen", 0) + 1
        if any(self.params.on in frame.source for frame in frames):
            raise RuntimeError("exploded on purpose")
        return frames


class CountDataset(Stage):
    """Dataset scope: records how many frames it saw at once."""

    name = "count_dataset"
    kind = "filter"
    scope = "dataset"

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            frame.meta["dataset_size"] = len(frames)
        return frames


class DieOn(Stage):
    """SIGKILLs its own process on the image named by $TEST_DIE_ON (a crash at a chosen moment)."""

    name = "die_on"
    kind = "filter"

    def process(self, frames: list[Frame]) -> list[Frame]:
        import os
        import signal

        target = os.environ.get("TEST_DIE_ON")
        if target and any(target in frame.source for frame in frames):
            os.kill(os.getpid(), signal.SIGKILL)
        return frames


class CrashOn(Stage):
    """SIGKILLs its own process on an image whose source contains `on`: every time, or with a
    `marker` file only the first time (the process that creates the marker dies; a retry passes)."""

    name = "crash_on"
    kind = "filter"

    class Params(StageParams):
        on: str = "white"
        marker: str | None = None

    def process(self, frames: list[Frame]) -> list[Frame]:
        import os
        import signal

        if not any(self.params.on in frame.source for frame in frames):
            return frames
        if self.params.marker is not None:
            try:
                os.close(os.open(self.params.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return frames  # died once already: the retried batch goes through
        os.kill(os.getpid(), signal.SIGKILL)
        return frames


class BadWeights(Stage):
    """A model whose weights file turns out to be bad while loading (after `delay` seconds): what a
    corrupt checkpoint does, past the pre-flight file check."""

    name = "bad_weights"
    kind = "filter"

    class Params(StageParams):
        delay: float = 0.0
        path: str = "weights.pth"

    def load(self) -> None:
        import time

        from recognize.errors import ModelFileError

        time.sleep(self.params.delay)
        raise ModelFileError(f"{self.params.path}: not a checkpoint (test double)")

    def process(self, frames: list[Frame]) -> list[Frame]:
        return frames


class SlowLoad(Stage):
    """A model that takes `delay` seconds to load, then writes `marker` (if set): shows whether a
    load was still under way when the process ended. (Not `slow_load`: the serve tests' stage has
    that name.)"""

    name = "slow_loading"
    kind = "filter"

    class Params(StageParams):
        delay: float = 0.0
        marker: str | None = None

    def load(self) -> None:
        import time
        from pathlib import Path

        time.sleep(self.params.delay)
        if self.params.marker is not None:
            Path(self.params.marker).write_text("loaded\n")

    def process(self, frames: list[Frame]) -> list[Frame]:
        return frames


class ProcessInfo(Stage):
    """Writes what the process computing it runs with into each frame's meta: its niceness, its malloc
    arena limit and one recognize setting (where a Ray worker's differ from the driver's unless the
    engine passes them on)."""

    name = "process_info"
    kind = "filter"

    def process(self, frames: list[Frame]) -> list[Frame]:
        import os

        for frame in frames:
            frame.meta["process"] = {"pid": os.getpid(), "niceness": os.nice(0),
                                     "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
                                     "feature_cache_mb": os.environ.get("RECOGNIZE_FEATURE_CACHE_MB")}
        return frames


STAGES = [Brightness, CenterBox, BoxMask, Explode, CountDataset, DieOn, CrashOn, BadWeights, SlowLoad, ProcessInfo]


@recognize.hookimpl
def register_stages(register):
    for stage in STAGES:
        register(stage)
