"""The RAM data engine's region logic, as plain functions every recipe and stage reuses.

The RAM paper cleans its training tags by localizing each tag, cropping the regions, re-checking
each crop with the tagger, clustering every tag's crops with K-Means++ and dropping the crops
farthest from their cluster centres. This module holds that logic with no Stage, model or file
layout attached, so it is testable on arrays and runs the same in one process or on a cluster:

- `crop_box` / `crop_region`: a region's pixels, with padding, clipped to the image.
- `confirm_regions` / `confirm_many`: keep a region only when a scoring callable confirms its tag
  on its crop; `tags_without_confirmed_region` says which image tags lost their support.
- `find_outliers`: per tag, K-Means++ (scikit-learn) over the crops' embeddings and the
  `drop_fraction` farthest from their centres.
- `merge_tags`, `CaptionParser` / `parse_caption_tags`: the union of predicted and given tags;
  vocabulary names found in captions (longest match first, simple plurals).
- `read_sidecar`, `CaptionsFile`: tags and captions given with the images.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recognize.errors import RecognizeError
from recognize.frame import Region, Tag

Box = tuple[float, float, float, float]

# -- cropping --------------------------------------------------------------------------------


def crop_box(image_size: tuple[int, int], box: Sequence[float], padding: float = 0.0) -> tuple[int, int, int, int]:
    """Integer pixel window (x0, y0, x1, y1) of `box` grown by `padding` x its size on each side.

    `image_size` is (height, width). The window is clipped to the image and is at least one pixel
    wide and high, so a thin box still gives the tagger something to look at. Raises ValueError
    for a box with no overlap with the image (nothing there to crop).
    """
    height, width = int(image_size[0]), int(image_size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box {tuple(box)} has non-finite coordinates")
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(f"box {tuple(box)} lies outside the {width}x{height} image")
    pad_x, pad_y = padding * (x1 - x0), padding * (y1 - y0)
    left = max(0, math.floor(x0 - pad_x))
    top = max(0, math.floor(y0 - pad_y))
    right = min(width, math.ceil(x1 + pad_x))
    bottom = min(height, math.ceil(y1 + pad_y))
    if right <= left:
        right = min(width, left + 1)
        left = right - 1
    if bottom <= top:
        bottom = min(height, top + 1)
        top = bottom - 1
    return left, top, right, bottom


def crop_region(image: np.ndarray, box: Sequence[float], padding: float = 0.0) -> np.ndarray:
    """The pixels of `box` (xyxy) plus `padding` (a fraction of the box size per side), as a copy."""
    left, top, right, bottom = crop_box(image.shape[:2], box, padding)
    return np.ascontiguousarray(image[top:bottom, left:right])


# -- re-checking regions with the tagger ------------------------------------------------------

#: `score(crops, tags) -> (scores, thresholds)`, two float arrays [N]: the tagger's score of
#: `tags[i]` on `crops[i]` and the threshold it must exceed. NaN score: the scorer cannot judge
#: that tag (e.g. it is not in the tagger's vocabulary).
ScoreFn = Callable[[list[np.ndarray], list[str]], tuple[np.ndarray, np.ndarray]]

UnknownPolicy = Literal["keep", "drop"]


@dataclass(frozen=True)
class RegionCheck:
    """The verdict on one region: `reason` says why it was dropped (None when kept)."""

    index: int
    tag: str
    box: Box
    keep: bool
    score: float | None = None
    threshold: float | None = None
    reason: str | None = None


REASON_NOT_CONFIRMED = "not confirmed on its crop"
REASON_OUTSIDE = "box outside the image"
REASON_UNKNOWN_TAG = "tag unknown to the tagger"
REASON_OUTLIER = "outlier among the tag's crops"
REASON_NO_CONFIRMED_REGION = "no confirmed region"
REASON_ALL_REJECTED = "all regions rejected"


def confirm_regions(
    image: np.ndarray,
    regions: Sequence[Region],
    score: ScoreFn,
    padding: float = 0.1,
    batch_size: int = 16,
    unknown: UnknownPolicy = "keep",
) -> list[RegionCheck]:
    """Score each region's tag on its crop and keep the regions whose score exceeds the threshold.

    Strictly above, as a tagger predicts a tag (`score > threshold`), so a region is kept exactly
    when the tagger would have predicted its tag on the crop. Crops go to `score` in batches of
    `batch_size` (one forward pass each). A region whose box misses the image is dropped without
    scoring; one whose tag the scorer cannot judge follows `unknown`.
    """
    return confirm_many([(image, regions)], score, padding, batch_size, unknown)[0]


def confirm_many(
    items: Sequence[tuple[np.ndarray, Sequence[Region]]],
    score: ScoreFn,
    padding: float = 0.1,
    batch_size: int = 16,
    unknown: UnknownPolicy = "keep",
) -> list[list[RegionCheck]]:
    """`confirm_regions` over several images at once: crops of all images share the scorer's batches."""
    checks: list[list[RegionCheck | None]] = [[None] * len(regions) for _, regions in items]
    pending: list[tuple[int, int, np.ndarray]] = []
    for n, (image, regions) in enumerate(items):
        for i, region in enumerate(regions):
            try:
                pending.append((n, i, crop_region(image, region.box, padding)))
            except ValueError:
                checks[n][i] = RegionCheck(i, region.tag, region.box, keep=False, reason=REASON_OUTSIDE)
    size = max(1, batch_size)
    for start in range(0, len(pending), size):
        chunk = pending[start : start + size]
        tags = [items[n][1][i].tag for n, i, _ in chunk]
        scores, thresholds = score([crop for _, _, crop in chunk], tags)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
        if scores.shape[0] != len(chunk) or thresholds.shape[0] != len(chunk):
            raise ValueError(f"the scorer returned {scores.shape[0]} scores for {len(chunk)} crops")
        for (n, i, _), value, threshold in zip(chunk, scores, thresholds):
            region = items[n][1][i]
            if math.isnan(value):
                keep = unknown == "keep"
                checks[n][i] = RegionCheck(i, region.tag, region.box, keep=keep,
                                           reason=None if keep else REASON_UNKNOWN_TAG)
                continue
            keep = bool(value > threshold)
            checks[n][i] = RegionCheck(i, region.tag, region.box, keep=keep, score=float(value),
                                       threshold=float(threshold), reason=None if keep else REASON_NOT_CONFIRMED)
    return [[c for c in row if c is not None] for row in checks]


TagPolicy = Literal["none", "rejected", "unconfirmed"]


def tags_without_confirmed_region(
    tag_names: Iterable[str], checks: Sequence[RegionCheck], policy: TagPolicy
) -> dict[str, str]:
    """Image tags to drop after `confirm_regions`, with the reason.

    `rejected`: tags that had regions and lost them all. `unconfirmed`: also tags that never had a
    region (nothing supports them on the image). `none`: keep every tag.
    """
    if policy == "none":
        return {}
    had: set[str] = {c.tag for c in checks}
    kept: set[str] = {c.tag for c in checks if c.keep}
    drop: dict[str, str] = {}
    for name in tag_names:
        if name in kept:
            continue
        if name in had:
            drop[name] = REASON_ALL_REJECTED
        elif policy == "unconfirmed":
            drop[name] = REASON_NO_CONFIRMED_REGION
    return drop


# -- outliers --------------------------------------------------------------------------------


@dataclass
class TagOutliers:
    """Clustering of one tag's crops: each crop's distance and the indices dropped (farthest first)."""

    tag: str
    distances: np.ndarray
    labels: np.ndarray
    clusters: int
    dropped: list[int] = field(default_factory=list)

    @property
    def kept(self) -> list[int]:
        gone = set(self.dropped)
        return [i for i in range(len(self.distances)) if i not in gone]


def cluster_distances(
    embeddings: np.ndarray,
    k: int = 3,
    seed: int = 0,
    n_init: int = 4,
    min_cluster_fraction: float = 0.1,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """K-Means++ over `embeddings` [N, D]: (distance of each row to its centre, labels, k used).

    k shrinks to the number of distinct rows when there are fewer. A cluster holding less than
    `min_cluster_fraction` of the rows cannot hide its members: they are measured against the
    nearest large cluster's centre instead, so two planted outliers that K-Means gives their own
    clusters still stand out. Rows are L2-normalised first when `normalize` (cosine geometry).
    """
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=int), 0
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    distinct = np.unique(x, axis=0).shape[0]
    k_used = max(1, min(int(k), distinct))
    if k_used == 1:
        centres = x.mean(axis=0, keepdims=True)
        labels = np.zeros(n, dtype=int)
    else:
        km = KMeans(n_clusters=k_used, init="k-means++", n_init=n_init, random_state=seed).fit(x)
        centres, labels = km.cluster_centers_, km.labels_.astype(int)
    all_dist = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=2)  # [N, k]
    sizes = np.bincount(labels, minlength=k_used)
    large = sizes >= max(1, math.ceil(min_cluster_fraction * n))
    if not large.any():
        large[:] = True
    own = all_dist[np.arange(n), labels]
    nearest_large = np.where(large[None, :], all_dist, np.inf).min(axis=1)
    distances = np.where(large[labels], own, nearest_large)
    return distances, labels, k_used


def find_outliers(
    embeddings_by_tag: Mapping[str, np.ndarray],
    k: int = 3,
    drop_fraction: float = 0.1,
    seed: int = 0,
    n_init: int = 4,
    min_cluster_fraction: float = 0.1,
    normalize: bool = True,
) -> dict[str, TagOutliers]:
    """Per tag, the `floor(drop_fraction * N)` crops farthest from their cluster centres.

    Deterministic for a given `seed` (ties broken by crop index). Tags with too few crops for
    the fraction to reach one crop lose nothing.
    """
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    results: dict[str, TagOutliers] = {}
    for tag in sorted(embeddings_by_tag):
        emb = np.asarray(embeddings_by_tag[tag])
        distances, labels, used = cluster_distances(emb, k, seed, n_init, min_cluster_fraction, normalize)
        n = len(distances)
        count = int(math.floor(drop_fraction * n + 1e-9))
        order = sorted(range(n), key=lambda i: (-distances[i], i))
        results[tag] = TagOutliers(tag=tag, distances=distances, labels=labels, clusters=used,
                                   dropped=sorted(order[:count]))
    return results


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


_WORD = re.compile(r"[^\W_]+")

_IRREGULAR = {
    "man": "men", "woman": "women", "person": "people", "child": "children", "foot": "feet",
    "tooth": "teeth", "mouse": "mice", "goose": "geese", "ox": "oxen", "fish": "fish",
    "sheep": "sheep", "deer": "deer", "louse": "lice", "cactus": "cacti", "fungus": "fungi",
}


def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.casefold()))


def plural_forms(word: str) -> set[str]:
    """Plural spellings of an English noun, by the regular rules plus common irregulars."""
    forms = set()
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    if word.endswith(("s", "x", "z", "ch", "sh")):
        forms.add(word + "es")
    elif len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    else:
        forms.add(word + "s")
        if word.endswith("o"):
            forms.add(word + "es")
        if word.endswith("fe"):
            forms.add(word[:-2] + "ves")
        elif word.endswith("f"):
            forms.add(word[:-1] + "ves")
    if word.endswith("man") and len(word) > 3:
        forms.add(word[:-3] + "men")  # fireman -> firemen
    return forms


class CaptionParser:
    """Finds vocabulary names in captions: longest match first, plurals of the last word accepted.

    Text is case-folded and split into words (punctuation and hyphens separate words, so
    `t-shirt` and `t shirt` match alike). Build it once per vocabulary; `parse` is then linear in
    the caption's length.
    """

    def __init__(self, vocabulary: Sequence[str]) -> None:
        table: dict[tuple[str, ...], str] = {}
        exact: dict[tuple[str, ...], str] = {}
        for name in vocabulary:
            words = _words(name)
            if not words:
                continue
            exact.setdefault(words, name)
            for plural in plural_forms(words[-1]):
                table.setdefault(words[:-1] + (plural,), name)
        table.update(exact)  # an exact name beats another name's plural ("glasses" vs "glass")
        self._table = table
        self._longest = max((len(w) for w in table), default=0)

    def parse(self, caption: str) -> list[str]:
        """Vocabulary names in `caption`, in order of first appearance, each once."""
        words = _words(caption)
        found: dict[str, None] = {}
        i = 0
        while i < len(words):
            for n in range(min(self._longest, len(words) - i), 0, -1):
                name = self._table.get(words[i : i + n])
                if name is not None:
                    found.setdefault(name, None)
                    i += n
                    break
            else:
                i += 1
        return list(found)


def parse_caption_tags(caption: str, vocabulary: Sequence[str]) -> list[str]:
    """Vocabulary names found in `caption` (see `CaptionParser`; build one for many captions)."""
    return CaptionParser(vocabulary).parse(caption)


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
