"""Tags given with the images (sidecar files, a captions JSONL) and merging them with predicted tags."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recognize.errors import RecognizeError
from recognize.frame import Tag

# -- merging given tags ----------------------------------------------------------------------


def clean_tag_name(name: str) -> str:
    """Trimmed, inner whitespace collapsed (`'  hot   dog '` -> `'hot dog'`)."""
    return " ".join(str(name).split())


def vocabulary_index(vocabulary: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Case-folded name -> (index, spelling) of a vocabulary; build it once for many `merge_tags` calls."""
    return {v.casefold(): (i, v) for i, v in enumerate(vocabulary)}


def merge_tags(
    predicted: Sequence[Tag],
    given: Iterable[str],
    source: str,
    vocabulary: Sequence[str] | Mapping[str, tuple[int, str]] | None = None,
) -> tuple[list[Tag], list[str]]:
    """The predicted tags plus the given ones they lack (case-insensitive), and the names added.

    A given name that matches a vocabulary entry up to case takes the vocabulary's spelling and
    index, so it grounds and scores like a predicted tag. `vocabulary` may be its `vocabulary_index`.
    """
    if vocabulary is None:
        canonical: Mapping[str, tuple[int, str]] = {}
    else:
        canonical = vocabulary if isinstance(vocabulary, Mapping) else vocabulary_index(vocabulary)
    seen = {t.name.casefold() for t in predicted}
    merged = list(predicted)
    added: list[str] = []
    for raw in given:
        name = clean_tag_name(raw)
        if not name or name.casefold() in seen:
            continue
        index, name = canonical.get(name.casefold(), (None, name))
        seen.add(name.casefold())
        merged.append(Tag(name=name, index=index, source=source))
        added.append(name)
    return merged, added

# -- tags and captions given with the images -------------------------------------------------


@dataclass
class GivenTags:
    """Tags and captions that came with an image, and the file they came from."""

    tags: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    origin: str | None = None


def split_tag_text(text: str) -> list[str]:
    """`'dog, red ball\\ngrass'` -> `['dog', 'red ball', 'grass']` (commas and newlines separate)."""
    return [clean_tag_name(part) for part in re.split(r"[,\n;]", text) if clean_tag_name(part)]


def _as_tag_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return split_tag_text(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [clean_tag_name(v) for v in value if clean_tag_name(v)]
    raise RecognizeError(f"{where}: tags must be a list of strings or a comma-separated string")


def _as_captions(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise RecognizeError(f"{where}: a caption must be a string or a list of strings")


def read_sidecar(image_path: str | os.PathLike[str]) -> GivenTags | None:
    """Tags beside an image: `photo.txt` (comma/newline separated) or `photo.json`.

    The JSON is a list of tags or an object with `tags` (list or comma string) and optionally
    `caption` / `captions`. Returns None when there is no sidecar; a malformed one is a
    `RecognizeError` naming the file.
    """
    path = Path(image_path)
    given = GivenTags()
    found = False
    txt = path.with_suffix(".txt")
    if txt.is_file() and txt != path:
        given.tags.extend(split_tag_text(txt.read_text(encoding="utf-8")))
        given.origin = str(txt)
        found = True
    js = path.with_suffix(".json")
    if js.is_file() and js != path:
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise RecognizeError(f"{js}: not valid JSON ({exc})") from None
        if isinstance(data, dict):
            given.tags.extend(_as_tag_list(data.get("tags"), str(js)))
            given.captions.extend(_as_captions(data.get("caption"), str(js)))
            given.captions.extend(_as_captions(data.get("captions"), str(js)))
        else:
            given.tags.extend(_as_tag_list(data, str(js)))
        given.origin = str(js) if given.origin is None else f"{given.origin}, {js}"
        found = True
    return given if found else None


_IMAGE_KEYS = ("image", "file_name", "file", "path", "image_path")
_CAPTION_KEYS = ("caption", "captions", "text")


class CaptionsFile:
    """A captions JSONL: one `{"image": ..., "caption": ...}` object per line.

    The image is named by `image` (or `file_name`, `file`, `path`): a path relative to the JSONL's
    folder (or to `image_root`), an absolute path, or a bare file name. Captions may be a string or
    a list (`caption`, `captions` or `text`); an optional `tags` field adds tags directly. Several
    lines for one image accumulate (COCO-style five captions per image).
    """

    def __init__(self, path: str | os.PathLike[str], image_root: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RecognizeError(f"{self.path}: no such captions file")
        root = Path(image_root) if image_root is not None else self.path.parent
        self._by_path: dict[str, GivenTags] = {}
        self._by_name: dict[str, GivenTags] = {}
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{self.path}:{number}"
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise RecognizeError(f"{where}: not a JSON object ({exc})") from None
                if not isinstance(record, dict):
                    raise RecognizeError(f"{where}: expected a JSON object with `image` and `caption`")
                image = next((record[k] for k in _IMAGE_KEYS if isinstance(record.get(k), str)), None)
                if image is None:
                    raise RecognizeError(f"{where}: no image name (one of {', '.join(_IMAGE_KEYS)})")
                captions: list[str] = []
                for key in _CAPTION_KEYS:
                    captions.extend(_as_captions(record.get(key), where))
                tags = _as_tag_list(record.get("tags"), where)
                resolved = _key((root / image) if not Path(image).is_absolute() else Path(image))
                entry = self._by_path.setdefault(resolved, GivenTags(origin=where))
                entry.captions.extend(captions)
                entry.tags.extend(tags)
                for name in {Path(image).as_posix(), Path(image).name, Path(image).with_suffix("").as_posix()}:
                    self._by_name.setdefault(name, entry)

    def find(self, source: str, name: str | None = None) -> GivenTags | None:
        """The entry for an image at `source` (output name `name`): by path first, then by name."""
        entry = self._by_path.get(_key(Path(source)))
        if entry is not None:
            return entry
        candidates = [name, Path(source).name, Path(source).stem] if name else [Path(source).name, Path(source).stem]
        for candidate in candidates:
            if candidate and candidate in self._by_name:
                return self._by_name[candidate]
        return None

    def __len__(self) -> int:
        return len(self._by_path)


def _key(path: Path) -> str:
    return os.path.normcase(os.path.abspath(path))
