"""Results that do not depend on the image, computed once and kept while their inputs stay the same.

RAM's label queries (`relu(wordvec_proj(label_embed))`) and the first decoder layer's query projection
of them are the same for every image, and so is Tag2Text's first query projection of its label
embedding: ~9 GFLOP of RAM's 320 per image and ~4 of Tag2Text's 176 that the official code recomputes
for every batch. `Precomputed.get` keeps such results on their module, keyed by the *identity* and
version counter of the tensors they came from (an entry holds them, so their memory cannot be reused
by another tensor while it lives; an in-place edit or a checkpoint load bumps the version; a replaced
parameter is another object) and by an optional extra key (a dtype).

It keeps nothing and computes afresh:
- while autograd records (`torch.is_grad_enabled()`): a result kept from an inference-mode call is an
  inference tensor, which autograd cannot save, and a gradient may flow through it (w.r.t. the weights)
  or around it (w.r.t. the image, Grad-CAM);
- for inputs that are not plain tensors (torchao's quantized weight subclasses: no storage to stamp);
- under autocast (`recognize.feature_cache.numeric_mode`): Tag2Text's `queries.to(dtype)` is the same
  object under float32 and under a user's bf16 autocast, whose result must not be served to a float32
  call; RAM's `label_embed.to(bf16)` is a new tensor every call, which would only push the float32
  entries out. The opt-in fast modes run the official path;
- when `PRECOMPUTE` is off (benchmarks' "before" side, the official path).

Models are shared across threads (serve variants, `region_confirm`'s tagger, the tagger stage), each
variant possibly with its own open-set labels: the cache holds up to `ENTRIES` immutable entries,
published by one assignment of a new tuple (readers take the tuple once, so they never see half an
entry), so two label sets alternating on one model do not evict each other.

Why this differs from the official code: only in when the same numbers are computed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence

import torch

from recognize.feature_cache import numeric_mode

__all__ = ["ENTRIES", "PRECOMPUTE", "Precomputed", "cache_on"]

#: Keep image-independent results between calls (False: compute them every call, as the official code).
PRECOMPUTE = True

#: Results kept per cache (newest first): a few serve variants with their own label sets on one model.
ENTRIES = 4

#: (input, its stamp, a copy of an inference tensor (no version counter) or None) per input
_Inputs = tuple[tuple[torch.Tensor, tuple, "torch.Tensor | None"], ...]
#: (inputs, extra key, result): never changed once published
_Entry = tuple[_Inputs, Hashable, torch.Tensor]


class Precomputed:
    """Up to `ENTRIES` tensors computed from their `inputs`; each valid while the same tensor objects,
    unmodified, are given (with the same `key`). Thread-safe."""

    def __init__(self) -> None:
        self._entries: tuple[_Entry, ...] = ()
        self._publish = threading.Lock()

    def get(self, inputs: Sequence[torch.Tensor], compute: Callable[[], torch.Tensor],
            key: Hashable = None) -> torch.Tensor:
        if not _cacheable(inputs):
            return compute()
        for entry in self._entries:  # one read of the tuple: a concurrent publish does not change it
            if entry[1] == key and _same(inputs, entry[0]):
                return entry[2]
        # stamps and copies before computing: an edit made meanwhile leaves the entry stale, never wrong
        kept = tuple((t, _stamp(t), t.clone() if t.is_inference() else None) for t in inputs)
        value = compute()
        with self._publish:  # two threads publishing at once must not drop each other's entry
            ids = [id(t) for t in inputs]
            others = tuple(e for e in self._entries  # the stale entries of the same inputs go
                           if not (e[1] == key and [id(t) for t, _, _ in e[0]] == ids))
            self._entries = ((kept, key, value), *others)[:ENTRIES]
        return value

    def clear(self) -> None:
        with self._publish:
            self._entries = ()

    def __reduce__(self) -> tuple:
        """A copied or pickled model gets an empty cache (its entries name the original's tensors, and a
        lock cannot be copied): `copy.deepcopy(model)` and `pickle` keep working."""
        return Precomputed, ()


def _same(inputs: Sequence[torch.Tensor], kept: _Inputs) -> bool:
    if len(inputs) != len(kept):
        return False
    for tensor, (held, stamp, snapshot) in zip(inputs, kept):
        if tensor is not held or _stamp(tensor) != stamp:
            return False
        if snapshot is not None and not torch.equal(tensor, snapshot):
            return False
    return True


def _cacheable(inputs: Sequence[torch.Tensor]) -> bool:
    return (PRECOMPUTE and not torch.is_grad_enabled() and not numeric_mode()
            and all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in inputs))


def _stamp(tensor: torch.Tensor) -> tuple:
    """Version counter, storage, dtype, device: an in-place edit, a load, or `module.to(...)` (which swaps a
    parameter's `.data` in place) changes it. Inference tensors (weights loaded under
    `torch.inference_mode`, as the stages load them) have no version counter: they are compared with a
    copy kept at compute time instead (`torch.equal`; the inputs here are at most a few MB)."""
    version = -1 if tensor.is_inference() else tensor._version
    return version, tensor.data_ptr(), tensor.dtype, tensor.device, tuple(tensor.shape)


def cache_on(module: torch.nn.Module, name: str) -> Precomputed:
    """The `Precomputed` called `name` on `module` (created on first use; not a parameter or buffer)."""
    attribute = f"_precomputed_{name}"
    cache = module.__dict__.get(attribute)  # (the common case: no new Precomputed and lock built per call)
    return cache if cache is not None else module.__dict__.setdefault(attribute, Precomputed())  # atomic
