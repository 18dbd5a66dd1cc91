"""A deterministic scoring tagger for the eval tests: scores computed from the pixels, no weights.

Registered like `teststages`: in-process through the `eval_stages` fixture of tests/eval and
tests/commands, in subprocesses through RECOGNIZE_PLUGINS=evalstages.
"""

from __future__ import annotations

import contextlib
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import recognize
from recognize import Frame, Stage, StageParams, Tag
from recognize.taggers.vocabulary import Vocabulary

#: closed-set classes, each answered by one image statistic
NAMES = ["red", "green", "blue", "bright", "dark", "busy"]
THRESHOLDS = [0.4, 0.4, 0.4, 0.55, 0.5, 0.3]


def image_features(image: np.ndarray) -> np.ndarray:
    """Six statistics in [0, 1]: channel shares, brightness, darkness, local contrast.

    Read on every 4th pixel of every 4th row, so full-size photos stay cheap.
    """
    pixels = image[::4, ::4].astype(np.float64) / 255.0
    channels = pixels.reshape(-1, 3).mean(axis=0)
    shares = channels / max(channels.sum(), 1e-6)
    brightness = pixels.mean()
    busy = np.abs(np.diff(pixels, axis=1)).mean() * 4.0
    return np.clip(np.array([*shares, brightness, 1.0 - brightness, busy]), 0.0, 1.0)


class PixelTagger(Stage):
    """Scores every vocabulary class from pixel statistics; `tags` makes it open-set."""

    name = "pixel_tagger"
    kind = "tagger"

    class Params(StageParams):
        tags: str | None = None
        descriptions: str | None = None
        threshold: float | None = None
        batch_size: int = 4
        device: str = "cpu"

    def load(self) -> None:
        if self.params.tags:
            names = [line.strip() for line in Path(self.params.tags).read_text(encoding="utf-8").splitlines()
                     if line.strip()]
            self.vocabulary = Vocabulary(names, thresholds=np.full(len(names), 0.5, dtype=np.float32))
        else:
            self.vocabulary = Vocabulary(list(NAMES), thresholds=np.array(THRESHOLDS, dtype=np.float32))
        if self.params.threshold is not None:
            self.vocabulary = self.vocabulary.with_thresholds(self.params.threshold)
        # each class reads one statistic, with a per-name offset so open-set classes differ
        self._feature = np.array([i % 6 if not self.params.tags else zlib.crc32(n.encode()) % 6
                                  for i, n in enumerate(self.vocabulary.names)])
        self._offset = np.array([0.0 if not self.params.tags else (zlib.crc32(n.encode()) % 97) / 970.0
                                 for n in self.vocabulary.names])
        self.batches: list[int] = []

    def score_images(self, images: list[np.ndarray]) -> np.ndarray:
        self.ensure_loaded()
        self.batches.append(len(images))
        features = np.stack([image_features(image) for image in images])
        return np.clip(features[:, self._feature] + self._offset, 0.0, 1.0).astype(np.float32)

    def process(self, frames: list[Frame]) -> list[Frame]:
        scores = self.score_images([frame.image for frame in frames])
        for b, (frame, row) in enumerate(zip(frames, self.vocabulary.predict(scores), strict=True)):
            frame.tags.extend(Tag(name=self.vocabulary.names[i], score=float(scores[b, i]), index=int(i),
                                  source=self.name) for i in row)
        return frames


@recognize.hookimpl
def register_stages(register):
    register(PixelTagger)


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """This module registered as a plugin in-process, for one test."""
    from recognize import plugins

    with plugins.registered(sys.modules[__name__], name="evalstages"):
        yield
