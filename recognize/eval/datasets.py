"""Readers for the official tagging benchmark files, and their mapping onto a model's vocabulary.

The RAM repository ships its benchmarks as two text files each (`datasets/<name>/`):

- a **taglist**: one class per line, either a tag name (`openimages_*_ram_taglist.txt`,
  `hico_600_taglist.txt`, `imagenet_multi_1000_taglist.txt`) or a model vocabulary id
  (`openimages_common_214_tag2text_tagidlist.txt`: Tag2Text's list repeats 116 names, so its
  benchmark names classes by id). Lines are stripped, as the official reader does.
- an **annotation** file: one image per line, `image,label,label...`. The labels are, per file,
  either taglist names (OpenImages, RAM), vocabulary ids that appear in an id taglist
  (OpenImages, Tag2Text) or, after a single comma, space-separated 0-based positions in the
  taglist (`ILSVRC2012_val_00000002.JPEG,970 795`, HICO). An image may have no label at all.
  OpenImages names have no file extension: the official loader appends `.jpg`.

A taglist may list a class name twice (ImageNet has two "crane"s); a name label then marks both
columns, as the official `get_mAP` does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from recognize.errors import InputError
from recognize.images import IMAGE_EXTENSIONS

_INT = re.compile(r"^\d+$")

AnnotationFormat = Literal["names", "ids", "positions"]


@dataclass(frozen=True)
class Taglist:
    """The benchmark's classes, in the order of its score columns."""

    names: list[str]
    #: vocabulary ids when the file lists ids (Tag2Text); None for names
    ids: list[int] | None
    path: str

    def __len__(self) -> int:
        return len(self.names)


def read_taglist(path: str | os.PathLike[str]) -> Taglist:
    """Read a taglist file (names or vocabulary ids, one per line)."""
    path = Path(path)
    lines = _read_lines(path, "taglist")
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    for number, name in enumerate(names, 1):
        if not name:
            raise InputError(f"{path}:{number}: empty line in the taglist (one class name or id per line)")
    if not names:
        raise InputError(f"{path}: the taglist is empty")
    ids = [int(n) for n in names] if all(_INT.match(n) for n in names) else None
    return Taglist(names=names, ids=ids, path=str(path))


@dataclass(frozen=True)
class Annotations:
    """Ground truth: one row of 0/1 targets per image, one column per taglist class."""

    images: list[str]
    targets: np.ndarray  #: bool [images, classes]
    format: AnnotationFormat
    path: str


def read_annotations(path: str | os.PathLike[str], taglist: Taglist) -> Annotations:
    """Read an annotation file against `taglist`; the label format is detected per file.

    Unknown labels are errors (the official code would stop with a KeyError); the message names
    the line.
    """
    path = Path(path)
    rows: list[tuple[int, str, list[str]]] = []
    for number, line in enumerate(_read_lines(path, "annotation"), 1):
        if not line.strip():
            continue
        image, *labels = line.split(",")
        image = image.strip()
        if not image:
            raise InputError(f"{path}:{number}: the line has no image name")
        rows.append((number, image, [label.strip() for label in labels if label.strip()]))
    if not rows:
        raise InputError(f"{path}: no annotation lines")

    columns: dict[str, list[int]] = {}
    if taglist.ids is not None:
        fmt: AnnotationFormat = "ids"
        for position, tag_id in enumerate(taglist.ids):
            columns.setdefault(str(tag_id), []).append(position)
    else:
        for position, name in enumerate(taglist.names):
            columns.setdefault(name, []).append(position)
        labels = [label for _, _, row_labels in rows for label in row_labels]
        if all(label in columns for label in labels):
            fmt = "names"
        elif all(all(_INT.match(token) for token in label.split()) for label in labels):
            fmt = "positions"
        else:
            fmt = "names"

    targets = np.zeros((len(rows), len(taglist)), dtype=bool)
    for row, (number, _image, row_labels) in enumerate(rows):
        for label in row_labels:
            if fmt == "positions":
                for token in label.split():
                    position = int(token)
                    if position >= len(taglist):
                        raise InputError(f"{path}:{number}: class position {position} is outside the "
                                         f"{len(taglist)}-class taglist {taglist.path}")
                    targets[row, position] = True
                continue
            tokens = label.split() if fmt == "ids" else [label]
            for token in tokens:
                if token not in columns:
                    what = "tag id" if fmt == "ids" else "tag"
                    raise InputError(f"{path}:{number}: {what} {token!r} is not in the taglist {taglist.path}")
                targets[row, columns[token]] = True
    return Annotations(images=[image for _, image, _ in rows], targets=targets, format=fmt, path=str(path))


def vocabulary_columns(taglist: Taglist, vocabulary: Sequence[str]) -> np.ndarray:
    """For each taglist class, the model's score column that answers it.

    Ids index the vocabulary directly. Names: a vocabulary equal to the taglist (an open-set
    tagger built from this very taglist) maps position by position, so repeated names keep
    their own columns; otherwise each name maps to its first occurrence in the vocabulary, as
    the official `ram_tag_list.index(tag)` does.
    """
    vocabulary = list(vocabulary)
    if taglist.ids is not None:
        outside = [i for i in taglist.ids if i >= len(vocabulary)]
        if outside:
            raise InputError(f"{taglist.path}: tag id {outside[0]} is outside the model's {len(vocabulary)}-tag "
                             f"vocabulary ({len(outside)} such ids); is this the model's id list?")
        return np.asarray(taglist.ids, dtype=np.int64)
    if vocabulary == taglist.names:
        return np.arange(len(vocabulary), dtype=np.int64)
    first: dict[str, int] = {}
    for index, name in enumerate(vocabulary):
        first.setdefault(name, index)
    missing = [name for name in taglist.names if name not in first]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:3])
        raise InputError(
            f"{len(missing)} of {len(taglist)} classes of {taglist.path} are not in the tagger's vocabulary "
            f"({shown}{', ...' if len(missing) > 3 else ''}); evaluate them open-set (--open-set) or with a "
            "recipe whose tagger lists them"
        )
    return np.asarray([first[name] for name in taglist.names], dtype=np.int64)


def find_image(images_dir: Path, name: str) -> Path | None:
    """The file for an annotation's image name: as written, else with an image extension added."""
    exact = images_dir / name
    if exact.is_file():
        return exact
    for ext in (".jpg", *IMAGE_EXTENSIONS):
        for suffix in (ext, ext.upper()):
            candidate = images_dir / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise InputError(f"{path}: no such {what} file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text {what} file ({exc.reason} at byte {exc.start})") from None
