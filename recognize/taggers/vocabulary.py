"""A tagger's vocabulary: tag names (English, Chinese), per-class thresholds, and the user's choices.

API:
- `read_tag_list(path)`: lines exactly as the official code reads them (`splitlines()`, no strip).
- `read_thresholds(path, expected=None)`: one float per line; a length other than `expected` is a
  one-line `ModelFileError`.
- `Vocabulary(names, names_zh=None, thresholds=None)`: `.index_of(name)`, `.with_thresholds(...)`
  (global override, per-tag overrides), `.allowed_mask(include, exclude)`, `.predict(scores, mask)`
  (strict `score > threshold`, class-index order), `.official_strings(indices)` (the `" | "` joins
  the official `generate_tag` returns), `.subset(indices)`, `.clean_zh(i)`.

Chinese names: 2579 lines of the official Chinese list end with a space, and the official output
strings keep it (`"猿  | 应用程序  | 栏杆"`). `official_strings` reproduces that byte for byte so users can
compare with the official tool; a `Tag.name_zh` carries the stripped name, because a trailing space
is plainly an artefact of the file, not part of the name.

Threshold file length: the official RAM/RAM++ constructors overwrite thresholds from a fixed file by
line number, so a longer file raises `IndexError` and a shorter one silently leaves classes at 0.68.
We fail with a clear message instead; for a subset of the vocabulary, take `subset(indices)` of the
full vocabulary (as the official `batch_inference.py` does).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from recognize.errors import ModelFileError, RecognizeError

DEFAULT_THRESHOLD = 0.68
OPENSET_THRESHOLD = 0.5


def read_tag_list(path: str | os.PathLike[str]) -> list[str]:
    """One tag per line, nothing stripped (the official reading)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such tag list file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: unreadable tag list ({exc})") from None


def read_thresholds(path: str | os.PathLike[str], expected: int | None = None) -> np.ndarray:
    """One float per line; `expected` classes or a one-line error."""
    lines = [line for line in read_tag_list(path) if line.strip()]
    try:
        values = np.array([float(line) for line in lines], dtype=np.float32)
    except ValueError as exc:
        raise ModelFileError(f"{path}: not a threshold file ({exc})") from None
    if expected is not None and len(values) != expected:
        raise ModelFileError(
            f"{path}: {len(values)} thresholds for {expected} tags; the threshold file must have one line per tag"
        )
    return values


def _unknown(name: str, known: Sequence[str], what: str) -> RecognizeError:
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return RecognizeError(f"{what}: unknown tag {name!r} (not in the vocabulary){hint}")


@dataclass
class Vocabulary:
    """Names (and Chinese names, unstripped) of a tagger's classes, with their thresholds."""

    names: list[str]
    names_zh: list[str] | None = None
    thresholds: np.ndarray | None = None
    _index: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.names)
        if self.names_zh is not None and len(self.names_zh) != n:
            raise ModelFileError(f"the Chinese tag list has {len(self.names_zh)} names for {n} English tags")
        if self.thresholds is None:
            self.thresholds = np.full(n, DEFAULT_THRESHOLD, dtype=np.float32)
        self.thresholds = np.asarray(self.thresholds, dtype=np.float32)
        if self.thresholds.shape != (n,):
            raise ModelFileError(f"{self.thresholds.shape[0]} thresholds for {n} tags")
        for i, name in enumerate(self.names):
            self._index.setdefault(name, []).append(i)

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_files(
        cls,
        tag_list: str | os.PathLike[str],
        tag_list_zh: str | os.PathLike[str] | None = None,
        threshold_file: str | os.PathLike[str] | None = None,
        default_threshold: float = DEFAULT_THRESHOLD,
    ) -> Vocabulary:
        names = read_tag_list(tag_list)
        zh = read_tag_list(tag_list_zh) if tag_list_zh is not None else None
        if threshold_file is not None:
            thresholds = read_thresholds(threshold_file, expected=len(names))
        else:
            thresholds = np.full(len(names), default_threshold, dtype=np.float32)
        return cls(names, zh, thresholds)

    # -- lookups ---------------------------------------------------------------------------
    def indices_of(self, name: str, what: str = "tag") -> list[int]:
        """Every class index called `name` (Tag2Text's list repeats some names)."""
        if name not in self._index:
            raise _unknown(name, self.names, what)
        return self._index[name]

    def clean_zh(self, index: int) -> str | None:
        return None if self.names_zh is None else self.names_zh[index].strip()

    def subset(self, indices: Sequence[int]) -> Vocabulary:
        idx = list(indices)
        return Vocabulary(
            [self.names[i] for i in idx],
            None if self.names_zh is None else [self.names_zh[i] for i in idx],
            self.thresholds[idx],
        )

    # -- user choices ----------------------------------------------------------------------
    def with_thresholds(
        self, threshold: float | None = None, per_tag: Mapping[str, float] | None = None
    ) -> Vocabulary:
        """A copy whose thresholds are `threshold` for every class (when given), then `per_tag`."""
        values = self.thresholds.copy()
        if threshold is not None:
            values[:] = threshold
        for name, value in (per_tag or {}).items():
            values[self.indices_of(name, "thresholds")] = value
        return Vocabulary(list(self.names), None if self.names_zh is None else list(self.names_zh), values)

    def allowed_mask(self, include: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> np.ndarray:
        """Boolean [C]: classes that may be reported (all, or `include` only), minus `exclude`."""
        if include is None:
            mask = np.ones(len(self), dtype=bool)
        else:
            mask = np.zeros(len(self), dtype=bool)
            for name in include:
                mask[self.indices_of(name, "include")] = True
        for name in exclude:
            mask[self.indices_of(name, "exclude")] = False
        return mask

    # -- predictions -----------------------------------------------------------------------
    def predict(self, scores: np.ndarray, allowed: np.ndarray | None = None) -> list[np.ndarray]:
        """Per image, the class indices with `score > threshold` (strict), ascending (official order)."""
        scores = np.asarray(scores)
        hits = scores > self.thresholds[None, :]
        if allowed is not None:
            hits &= allowed[None, :]
        return [np.flatnonzero(row) for row in hits]

    def official_strings(self, indices: Sequence[int], chinese: bool = False) -> str:
        """The official output string: names joined by `" | "` (Chinese names unstripped)."""
        names = self.names_zh if chinese else self.names
        if names is None:
            raise RecognizeError("this vocabulary has no Chinese names")
        return " | ".join(names[i] for i in indices)
