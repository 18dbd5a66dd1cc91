"""Re-checking regions with the tagger: a region is kept only when a scoring callable confirms its tag on
its crop, and `tags_without_confirmed_region` says which image tags lost their support (RAM paper)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from recognize.data_engine.crops import Box, crop_region
from recognize.data_engine.reasons import (
    REASON_ALL_REJECTED,
    REASON_NO_CONFIRMED_REGION,
    REASON_NOT_CONFIRMED,
    REASON_OUTSIDE,
    REASON_UNKNOWN_TAG,
)
from recognize.frame import Region

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


