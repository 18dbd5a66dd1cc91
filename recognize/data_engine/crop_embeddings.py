"""Crop embeddings that `region_confirm` computed, taken by `region_outliers` in the same process.

Why: both stages crop each region (the same padding by default) and run the same tagger's image
encoder on the crop: confirm for the class scores, outliers for the pooled embedding it clusters.
A tagger gives both from one encoding (`score_and_embed_images`), so confirm keeps the crops'
embeddings here and outliers takes them instead of encoding those crops a second time.

What matches: the tagger (its stage name and parameters, all but the batch size, and the model
object itself, `feature_cache.owner_token`), the numeric mode (autocast) and the crop's pixels, so
another padding, image, model or device never matches and is encoded as before. The batch size is left out because a crop's embedding does not depend on its
batch mates (confirm batches an engine batch's crops, outliers a tag's): with the tiny RAM, RAM++ and
Tag2Text of the tests, `embed_images` of crops together and one at a time, and `score_and_embed_images`
at batch 1 and 3, give bitwise the same embeddings (tests/data_engine/test_crop_embeddings.py), so
outliers clusters what it would have computed itself. The official sizes are not tested: should
the GEMM (oneDNN or torch's, by CPU: `recognize.onednn_linear`) block its work differently by batch,
an embedding would differ by float32 rounding and an outlier choice at a near tie could move.

Bounds: kept only during a local engine run (`kept_during`) of a pipeline in which a `region_outliers`
stage embeds with the same tagger (name and parameters) as an earlier `region_confirm`: another
pipeline's outliers stage, living in the same process (a notebook, a serve variant), asks for
nothing. Each entry is taken once, the oldest dropped beyond `max_bytes` (then outliers encodes what
it does not find); what is left (crops confirm rejected) is dropped when outliers has run, and
whatever remains when the run ends, however it ends. Not shared across processes (on Ray, confirm
runs in workers that keep nothing; outliers encodes its crops).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from recognize.errors import RecognizeError
from recognize.feature_cache import content_key, numeric_mode, owner_token

__all__ = ["CropEmbeddings", "crop_embeddings"]


class CropEmbeddings:
    """The process's store of crop embeddings (see the module docstring)."""

    def __init__(self, max_bytes: int = 256 * 2**20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        #: id -> (tagger stage, runs under way): the taggers whose crop embeddings a running
        #: pipeline's region_outliers will take
        self._producers: dict[int, tuple[Any, int]] = {}
        self._runs = 0

    @contextlib.contextmanager
    def kept_during(self, stages: Sequence[Any]) -> Iterator[None]:
        """While `stages` (one pipeline's, in order) run: keep the embeddings of the crops a stage
        that gives them (`gives_crop_embeddings`, region_confirm) encodes with a tagger that a later
        stage takes them from (`takes_crop_embeddings()`, region_outliers embedding with the same
        tagger). When the run ends, however it ends, those taggers' leftovers are dropped, and
        everything when no other run is under way."""
        producers = _producers(list(stages))
        with self._lock:
            self._runs += 1
            for tagger in producers:
                _, runs = self._producers.get(id(tagger), (tagger, 0))
                self._producers[id(tagger)] = (tagger, runs + 1)
        try:
            yield
        finally:
            with self._lock:
                self._runs -= 1
                for tagger in producers:
                    _, runs = self._producers.pop(id(tagger))
                    if runs > 1:
                        self._producers[id(tagger)] = (tagger, runs - 1)
                if self._runs == 0:
                    self._items.clear()
                    self._bytes = 0
                else:
                    for tagger in producers:
                        self._drop(_params_key(tagger))

    def wanted(self, tagger: Any) -> bool:
        """Whether a running pipeline's region_outliers will take the crop embeddings of `tagger`
        (this very tagger stage, registered by `kept_during`)."""
        return self.max_bytes > 0 and id(tagger) in self._producers

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
        with self._lock:
            self._drop(_tagger_key(tagger))

    def _drop(self, prefix: tuple) -> None:
        for key in [k for k in self._items if k[: len(prefix)] == prefix]:
            self._bytes -= self._items.pop(key).nbytes

    def __len__(self) -> int:
        return len(self._items)


def _params_key(tagger: Any) -> tuple:
    """The tagger stage's name and parameters, all but the batch size (see the module docstring)."""
    params = tagger.params.model_dump(exclude={"batch_size"})
    return tagger.name, repr(sorted(params.items()))


def _tagger_key(tagger: Any) -> tuple:
    """`_params_key`, the model object (confirm's and outliers' tagger stages share one through
    `shared_models`; another model never matches) and the numeric mode."""
    return (*_params_key(tagger), _model_token(getattr(tagger, "model", None)), numeric_mode())


def _model_token(model: Any) -> str:
    if model is None:
        return ""
    try:
        return owner_token(model)
    except (AttributeError, TypeError):  # an object that takes no attribute (a NumPy "model" of a test tagger)
        return f"id:{id(model)}"


def _producers(stages: list[Any]) -> list[Any]:
    """The tagger stages of `stages` whose crop embeddings a later stage takes."""
    found: list[Any] = []
    for i, giver in enumerate(stages):
        if not getattr(giver, "gives_crop_embeddings", False):
            continue
        takers = [s for s in stages[i + 1 :] if getattr(s, "takes_crop_embeddings", lambda: False)()]
        try:
            tagger = giver.tagger
            if any(_params_key(taker.tagger) == _params_key(tagger) for taker in takers):
                found.append(tagger)
        except RecognizeError:
            continue  # not a tagger the stage can use: its own load says so
    return found


#: the one store of this process
crop_embeddings = CropEmbeddings()
