"""Stages for the server tests: one that blocks until released, one whose loading is controlled.

Registered in-process by the `serve_stages` fixture (tests/serve/conftest.py), or in a
subprocess through RECOGNIZE_PLUGINS=servestages (with tests/support on PYTHONPATH).
"""

from __future__ import annotations

import os
import threading

import recognize
from recognize import Frame, Stage, StageParams, Tag
from recognize.errors import ModelFileError
from recognize.stage import shared_models

#: released by the test; `gate` stage calls wait on it
GATE = threading.Event()
#: set to let `slow_load` finish loading; `LOAD_FAILS` makes it fail instead
LOADED = threading.Event()
LOAD_FAILS = threading.Event()
#: how many times each model was built (shared_models factory calls), by key
BUILDS: dict[str, int] = {}
#: frames per `gate` call, in order
CALLS: list[int] = []


class Gate(Stage):
    """Waits for GATE on each call, then tags `seen`: lets a test hold requests in flight."""

    name = "gate"
    kind = "filter"

    def process(self, frames: list[Frame]) -> list[Frame]:
        CALLS.append(len(frames))
        if not GATE.wait(timeout=60):
            raise RuntimeError("gate never opened")
        for frame in frames:
            frame.tags.append(Tag(name="seen", score=1.0, source=self.name))
        return frames


class SlowLoad(Stage):
    """Loads only once LOADED is set (or fails with a model-file error when LOAD_FAILS is set, or
    at once when $SERVESTAGES_LOAD_FAILS is set: for a subprocess)."""

    name = "slow_load"
    kind = "filter"

    def load(self) -> None:
        if os.environ.get("SERVESTAGES_LOAD_FAILS") or not LOADED.wait(timeout=60) or LOAD_FAILS.is_set():
            raise ModelFileError("weights.bin: not found; put it at /models/weights.bin")

    def process(self, frames: list[Frame]) -> list[Frame]:
        return frames


class Counted(Stage):
    """A 'model' shared through shared_models, built once per key; `threshold` only filters."""

    name = "counted"
    kind = "tagger"

    class Params(StageParams):
        threshold: float = 0.5
        model: str = "small"

    def load(self) -> None:
        def build() -> dict:
            BUILDS[self.params.model] = BUILDS.get(self.params.model, 0) + 1
            return {"model": self.params.model}

        self.model = shared_models.get(("counted", self.params.model), build)

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            score = float(frame.image.mean()) / 255.0
            if score > self.params.threshold:
                frame.tags.append(Tag(name="lit", score=score, source=self.name))
        return frames


STAGES = [Gate, SlowLoad, Counted]


@recognize.hookimpl
def register_stages(register):
    for stage in STAGES:
        register(stage)
