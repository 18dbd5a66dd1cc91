"""A deterministic pixel-based tagger with the tagger-stage API, for testing the data-engine stages.

Vocabulary: red, green, blue. A class's score is that channel's share of the mean colour, its
embedding the normalised mean colour. The "model" (a tiny array) comes from `shared_models` like a
real tagger's, so tests can check that region stages share the tagging stage's instance.
`registered()` registers it (with the core test stages) for one test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np

import recognize
from recognize import Frame, Stage, StageParams, Tag
from recognize.stage import shared_models
from recognize.taggers.vocabulary import Vocabulary

NAMES = ["red", "green", "blue"]
BUILDS: list[tuple] = []  # every model build, so tests can count them
ENCODED: list[str] = []  # a content key per image encoded (scored and/or embedded), so tests can count encodings


class ColourTagger(Stage):
    name = "colour_tagger"
    kind = "tagger"

    class Params(StageParams):
        threshold: float = 0.4
        image_size: int = 384  # accepted (and ignored) so recipes written for ram_plus validate
        device: str = "auto"
        batch_size: int = 8

    def load(self) -> None:
        key = ("colour_tagger", self.params.image_size, self.params.device)

        def build() -> np.ndarray:
            BUILDS.append(key)
            return np.eye(3)

        self.model = shared_models.get(key, build)
        self.vocabulary = Vocabulary(list(NAMES), None, np.full(3, self.params.threshold, np.float32))
        self.scored_batches: list[int] = []

    def _encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The "image encoder": each image's mean colour."""
        from recognize.feature_cache import content_key

        self.ensure_loaded()
        ENCODED.extend(content_key(im) for im in images)
        return np.stack([im.reshape(-1, 3).mean(axis=0) for im in images]) if images else np.zeros((0, 3))

    def _scores(self, means: np.ndarray) -> np.ndarray:
        return (means @ self.model) / np.maximum(means.sum(axis=1, keepdims=True), 1e-9)

    @staticmethod
    def _embeddings(means: np.ndarray) -> np.ndarray:
        means = means.astype(np.float32)
        return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-9)

    def score_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        self.scored_batches.append(len(images))
        return self._scores(self._encode(images))

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self._embeddings(self._encode(images))

    def score_and_embed_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        self.scored_batches.append(len(images))
        means = self._encode(images)
        return self._scores(means), self._embeddings(means)

    def tags_for_scores(self, scores: np.ndarray) -> list[list[Tag]]:
        return [[Tag(name=NAMES[i], score=float(row[i]), index=i, source=self.name)
                 for i in np.flatnonzero(row > self.vocabulary.thresholds)] for row in scores]

    def process(self, frames: list[Frame]) -> list[Frame]:
        scores = self.score_images([f.image for f in frames])
        for frame, tags in zip(frames, self.tags_for_scores(scores)):
            frame.tags.extend(tags)
        return frames


@recognize.hookimpl
def register_stages(register):
    register(ColourTagger)


@contextlib.contextmanager
def registered() -> Iterator[None]:
    """This module and `teststages` registered in-process, with an empty model pool, for one test."""
    import sys

    import teststages

    from recognize import plugins

    shared_models.clear()
    BUILDS.clear()
    ENCODED.clear()
    with plugins.registered(sys.modules[__name__], name="colour_tagger"), \
            plugins.registered(teststages, name="teststages"):
        try:
            yield
        finally:
            shared_models.clear()
