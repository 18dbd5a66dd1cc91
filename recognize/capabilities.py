"""What other stages may rely on a stage to offer, as `typing.Protocol`s.

A region stage that re-checks crops needs a tagger that can score images; one that clusters crops
needs image embeddings. Checking `isinstance(stage, ImageScorer)` (the protocols are runtime
checkable) says so in one place, where a string of method names checked with `getattr` said it
nowhere a reader or a type checker could see.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ImageScorer(Protocol):
    """A tagger whose class scores other stages can read (the `region_confirm` stage, `recognize eval tags`).

    Once loaded it also has `vocabulary` (a `recognize.taggers.vocabulary.Vocabulary`: the names and
    thresholds of the score columns). It is not a protocol member because a stage may set it only in
    `load()`, and the check happens before loading.
    """

    def score_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Sigmoid scores [B, C], one row per RGB uint8 image, one column per vocabulary class."""
        ...


@runtime_checkable
class ImageEmbedder(Protocol):
    """A stage that embeds images (the `region_outliers` stage clusters crops with it)."""

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised float32 embeddings [B, D], one row per RGB uint8 image."""
        ...


@runtime_checkable
class ImageScoreEmbedder(Protocol):
    """A tagger that gives class scores and embeddings of the same images from one encoding
    (`region_confirm` then keeps the crops' embeddings for `region_outliers`)."""

    def score_and_embed_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(`score_images(images)`, `embed_images(images)`), each image encoded once."""
        ...


def missing_capabilities(stage: object, needs: Sequence[type]) -> list[str]:
    """Names of the protocols in `needs` that `stage` does not implement."""
    return [proto.__name__ for proto in needs if not isinstance(stage, proto)]
