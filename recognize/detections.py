"""What every localizer does with its raw boxes, written once for all of them.

A localizer (Grounding DINO, OWLv2, a third party's) ends with boxes, scores and the tag each box
was found for. Turning them into `Region`s follows one rule set, which must not drift between
plugins: non-maximum suppression through supervision (per tag, across tags, or none), regions
appended in descending score order with the frame's Chinese tag names, and, for a fixed class list
(tags the frame does not have yet), a `Tag` on the frame for each new region tag, scored by its best
box, so that every region's tag is one of the frame's tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np

from recognize.frame import Frame, Region, Tag

if TYPE_CHECKING:
    import supervision as sv

Nms = Literal["per_tag", "cross_tag", "none"]


def add_localized_regions(frame: Frame, found: sv.Detections, names: Sequence[str], source: str, *, nms: Nms,
                          nms_threshold: float, meta_keys: Sequence[str] = ()) -> None:
    """Append `found` (class ids index `names`) to `frame.regions` after `nms`; `meta_keys` name
    per-box `found.data` columns copied into each region's `meta` (e.g. Grounding DINO's tag score).
    The caller chooses the dtypes of `found`: scores are stored as `float(...)` of what it holds."""
    if not len(found):
        return
    if nms != "none":
        found = found.with_nms(threshold=nms_threshold, class_agnostic=nms == "cross_tag")
    order = np.argsort(-found.confidence, kind="stable")
    chinese = {t.name: t.name_zh for t in frame.tags}
    for k in order:
        tag = names[int(found.class_id[k])]
        frame.regions.append(Region(box=tuple(float(v) for v in found.xyxy[k]), score=float(found.confidence[k]),
                                    tag=tag, tag_zh=chinese.get(tag), source=source,
                                    meta={key: float(found.data[key][k]) for key in meta_keys}))
        if tag not in chinese:  # a fixed class list: the frame gets the tag, scored by its best box
            chinese[tag] = None
            frame.tags.append(Tag(name=tag, score=float(found.confidence[k]), source=source))
