"""A small bounded cache of image features, keyed by model and image content.

Why: asking about the same photo again with other prompts or thresholds (the web page's slider,
an API client trying thresholds) must not re-run an image encoder whose output cannot change.
SAM's image embedding and Grounding DINO's Swin features depend only on the model's weights and
the pixels, so they are cached under (model token, hash of the pixels).

The cache is bounded in bytes (tensors and arrays are measured) and evicts the least recently
used entry. It is off (0 bytes) by default: a batch run over distinct images gains nothing and
would only hold memory; `recognize serve` turns it on (`--feature-cache-mb`), as does
`$RECOGNIZE_FEATURE_CACHE_MB`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
_TOKEN_ATTRIBUTE = "_recognize_feature_token"


def content_key(*arrays: Any) -> str:
    """A hash of the arrays' (or tensors') dtype, shape and bytes: equal pixels, equal key."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        if hasattr(array, "detach"):  # a torch tensor
            array = array.detach().cpu().contiguous().numpy()
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def owner_token(owner: Any) -> str:
    """A stable id for a model object (stored on it), so features of two models never mix,
    even when one is freed and another takes its memory address."""
    token = getattr(owner, _TOKEN_ATTRIBUTE, None)
    if token is None:
        token = uuid.uuid4().hex
        object.__setattr__(owner, _TOKEN_ATTRIBUTE, token)
    return token


def size_of(value: Any) -> int:
    """Bytes held by tensors and arrays inside `value` (dataclasses, tuples, lists, dicts)."""
    if hasattr(value, "element_size") and hasattr(value, "nelement"):
        return int(value.element_size() * value.nelement())
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(size_of(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return sum(size_of(v) for v in value)
    if isinstance(value, dict):
        return sum(size_of(v) for v in value.values())
    return 64


def numeric_mode() -> str:
    """The autocast state in force ("" when none): one model run under fp32 and under bf16 autocast
    (a fast mode) gives different features, which must not be served to each other."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return ""
    modes = []
    for device in ("cpu", "cuda"):
        try:
            if torch.is_autocast_enabled(device):
                modes.append(f"{device}:{torch.get_autocast_dtype(device)}")
        except (AttributeError, RuntimeError, TypeError):  # older torch: no per-device query
            continue
    return ",".join(modes)


class FeatureCache:
    """Thread-safe LRU cache bounded by the bytes of what it holds."""

    def __init__(self, max_bytes: int = 0) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def resize(self, max_bytes: int) -> None:
        with self._lock:
            self.max_bytes = max_bytes
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: Any, size: int | None = None) -> None:
        """Store `value` (its bytes measured by `size_of` unless `size` is given)."""
        size = size_of(value) if size is None else size
        with self._lock:
            if size > self.max_bytes:
                return  # larger than the whole cache: keeping it would evict everything else
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            self._evict()

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._items:
            _, (_, size) = self._items.popitem(last=False)
            self._bytes -= size

    def compute_many(self, owner: Any, keys: Sequence[str], compute: Callable[[list[int]], list[T]]) -> list[T]:
        """The value for each content key: cached ones looked up, the rest computed by one
        `compute(indices_of_missing)` call (so a batch stays one batch) and stored."""
        if not self.enabled:
            return compute(list(range(len(keys))))
        token = (owner_token(owner), numeric_mode())
        found: list[Any] = [self.get((token, key)) for key in keys]
        missing = [i for i, value in enumerate(found) if value is None]
        if missing:
            for i, value in zip(missing, compute(missing), strict=True):
                found[i] = value
                self.put((token, keys[i]), value)
        return found


def _default_max_bytes() -> int:
    try:
        return int(float(os.environ.get("RECOGNIZE_FEATURE_CACHE_MB", "0")) * 2**20)
    except ValueError:
        return 0


#: The process-wide cache the image-encoding calls of SAM and Grounding DINO use.
feature_cache = FeatureCache(_default_max_bytes())
