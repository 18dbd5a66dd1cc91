"""Crop embeddings that `region_confirm` computed, taken by `region_outliers` in the same process.

Why: both stages crop each region (the same padding by default) and run the same tagger's image
encoder on the crop: confirm for the class scores, outliers for the pooled embedding it clusters.
A tagger gives both from one encoding (`score_and_embed_images`), so confirm keeps the crops'
embeddings here and outliers takes them instead of encoding those crops a second time.

What matches: the tagger (its stage name and parameters, all but the batch size), the numeric mode
(autocast) and the crop's pixels, so another padding, image, model or device never matches and is
encoded as before. The batch size is left out because a crop's embedding does not depend on its
batch mates (confirm batches an engine batch's crops, outliers a tag's): with the tiny RAM, RAM++ and
Tag2Text of the tests, `embed_images` of crops together and one at a time, and `score_and_embed_images`
at batch 1 and 3, give bitwise the same embeddings (tests/data_engine/test_crop_embeddings.py), so
outliers clusters what it would have computed itself. The official sizes are not tested: should
oneDNN block their GEMMs differently by batch, an embedding would differ by float32 rounding and an
outlier choice at a near tie could move.

Bounds: kept only while a `region_outliers` stage that embeds with the tagger exists in this
process (none: nothing is kept), each entry taken once, the oldest dropped beyond `max_bytes`
(then outliers encodes what it does not find), and what is left (crops confirm rejected) dropped
when outliers has run. Not shared across processes (Ray workers encode what they do not find).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from recognize.feature_cache import content_key, numeric_mode

__all__ = ["CropEmbeddings", "crop_embeddings"]


class CropEmbeddings:
    """The process's store of crop embeddings (see the module docstring)."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._consumers: weakref.WeakSet[Any] = weakref.WeakSet()

    def expect(self, consumer: Any) -> None:
        """`consumer` (a `region_outliers` stage) will take embeddings of crops by its `tagger`."""
        self._consumers.add(consumer)

    def wanted(self, tagger: Any) -> bool:
        """Whether any living consumer embeds crops with a tagger stage of `tagger`'s name."""
        return self.max_bytes > 0 and any(
            getattr(c.params, "embedder", None) == "tagger" and c.params.tagger == tagger.name
            for c in list(self._consumers))

    def remember(self, tagger: Any, crops: Sequence[np.ndarray], embeddings: np.ndarray) -> None:
        prefix = _tagger_key(tagger)
        with self._lock:
            for crop, embedding in zip(crops, embeddings):
                key = (*prefix, content_key(crop))
                old = self._items.pop(key, None)
                if old is not None:
                    self._bytes -= old.nbytes
                self._items[key] = np.array(embedding, dtype=np.float32)
                self._bytes += self._items[key].nbytes
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def take(self, tagger: Any, crops: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """The kept embedding of each crop (removed from the store), None where there is none."""
        if not self._items:
            return [None] * len(crops)
        prefix = _tagger_key(tagger)
        found = []
        with self._lock:
            for crop in crops:
                embedding = self._items.pop((*prefix, content_key(crop)), None)
                if embedding is not None:
                    self._bytes -= embedding.nbytes
                found.append(embedding)
        return found

    def forget(self, tagger: Any) -> None:
        """Drop what is left for `tagger` (embeddings of crops no consumer asked for)."""
        prefix = _tagger_key(tagger)
        with self._lock:
            for key in [k for k in self._items if k[: len(prefix)] == prefix]:
                self._bytes -= self._items.pop(key).nbytes

    def __len__(self) -> int:
        return len(self._items)


def _tagger_key(tagger: Any) -> tuple:
    params = tagger.params.model_dump(exclude={"batch_size"})
    return tagger.name, repr(sorted(params.items())), numeric_mode()


#: the one store of this process
crop_embeddings = CropEmbeddings()
