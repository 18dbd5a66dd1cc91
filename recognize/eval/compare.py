"""How far two recipes' outputs are apart, image by image: is a fast mode safe on *my* photos?

`recognize eval compare A B IMAGES...` runs two recipes (or reads two earlier run folders) and
compares their Frames with no ground truth at all, side A taken as the reference:

- tags: Jaccard agreement of the tag-name sets, and the largest score difference of a shared tag;
- boxes: per tag, regions of A and B are paired by the Hungarian assignment on box IoU
  (`scipy.optimize.linear_sum_assignment`), pairs under `match_iou` left unpaired; reported are the
  mean IoU of the paired boxes, the largest score difference of a pair, and the unpaired counts;
- masks: the mean mask IoU of the paired regions that both have a mask.

Why Hungarian per tag and not greedy by score: a fast mode shifts scores too, so a greedy pass in
score order pairs differently from run to run; the assignment maximising the total IoU is the
pairing a person would draw. Speed sits beside fidelity: each side's seconds per image comes from
its own `summary.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recognize.errors import InputError
from recognize.frame import Frame, Region

#: boxes of one tag whose IoU is below this are not the same object
DEFAULT_MATCH_IOU = 0.5


@dataclass
class ImageComparison:
    """Agreement of one image's results (A is the reference)."""

    name: str
    tags_a: int
    tags_b: int
    tag_jaccard: float
    max_tag_score_diff: float | None
    regions_a: int
    regions_b: int
    matched: int
    unmatched_a: int
    unmatched_b: int
    mean_box_iou: float | None
    max_region_score_diff: float | None
    masks_compared: int
    mean_mask_iou: float | None
    box_ious: list[float] = field(default_factory=list, repr=False)
    mask_ious: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("box_ious")
        data.pop("mask_ious")
        return data


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box of `a` [N,4] with every one of `b` [M,4] -> [N,M]."""
    import supervision as sv

    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return sv.box_iou_batch(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def match_regions(a: Sequence[Region], b: Sequence[Region],
                  match_iou: float = DEFAULT_MATCH_IOU) -> list[tuple[int, int, float]]:
    """(index in a, index in b, box IoU) of the regions paired per tag by maximal total IoU."""
    from scipy.optimize import linear_sum_assignment

    pairs = []
    for tag in dict.fromkeys(r.tag for r in a):
        ia = [i for i, r in enumerate(a) if r.tag == tag]
        ib = [j for j, r in enumerate(b) if r.tag == tag]
        if not ib:
            continue
        ious = box_iou(np.array([a[i].box for i in ia]), np.array([b[j].box for j in ib]))
        rows, cols = linear_sum_assignment(-ious)
        pairs += [(ia[r], ib[c], float(ious[r, c])) for r, c in zip(rows, cols) if ious[r, c] >= match_iou]
    return sorted(pairs)


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def _max(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(max(values)) if values else None


def compare_frames(a: Frame, b: Frame, match_iou: float = DEFAULT_MATCH_IOU) -> ImageComparison:
    """Tag, box and mask agreement of two results for the same image."""
    scores_a = {t.name: t.score for t in a.tags}
    scores_b = {t.name: t.score for t in b.tags}
    union = scores_a.keys() | scores_b.keys()
    shared = scores_a.keys() & scores_b.keys()
    jaccard = len(shared) / len(union) if union else 1.0
    tag_diffs = [abs(scores_a[n] - scores_b[n]) for n in shared if scores_a[n] is not None and scores_b[n] is not None]

    pairs = match_regions(a.regions, b.regions, match_iou)
    score_diffs = [abs(a.regions[i].score - b.regions[j].score) for i, j, _ in pairs
                   if a.regions[i].score is not None and b.regions[j].score is not None]
    mask_ious = [mask_iou(a.regions[i].mask, b.regions[j].mask) for i, j, _ in pairs
                 if a.regions[i].mask is not None and b.regions[j].mask is not None]
    box_ious = [iou for _, _, iou in pairs]
    return ImageComparison(
        name=a.name or Path(a.source).stem,
        tags_a=len(scores_a), tags_b=len(scores_b), tag_jaccard=jaccard, max_tag_score_diff=_max(tag_diffs),
        regions_a=len(a.regions), regions_b=len(b.regions), matched=len(pairs),
        unmatched_a=len(a.regions) - len(pairs), unmatched_b=len(b.regions) - len(pairs),
        mean_box_iou=_mean(box_ious), max_region_score_diff=_max(score_diffs),
        masks_compared=len(mask_ious), mean_mask_iou=_mean(mask_ious), box_ious=box_ious, mask_ious=mask_ious,
    )


@dataclass
class Comparison:
    """Every image's comparison and the totals over them."""

    images: list[ImageComparison]
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    match_iou: float = DEFAULT_MATCH_IOU

    def overall(self) -> dict[str, Any]:
        """Means over images (tags), over all paired regions (boxes, masks), sums of counts, maxima of diffs."""
        images = self.images
        return {
            "images": len(images),
            "tag_jaccard": _mean(c.tag_jaccard for c in images),
            "max_tag_score_diff": _max(c.max_tag_score_diff for c in images if c.max_tag_score_diff is not None),
            "regions_a": sum(c.regions_a for c in images),
            "regions_b": sum(c.regions_b for c in images),
            "matched": sum(c.matched for c in images),
            "unmatched_a": sum(c.unmatched_a for c in images),
            "unmatched_b": sum(c.unmatched_b for c in images),
            "mean_box_iou": _mean(iou for c in images for iou in c.box_ious),
            "max_region_score_diff": _max(c.max_region_score_diff for c in images
                                          if c.max_region_score_diff is not None),
            "masks_compared": sum(c.masks_compared for c in images),
            "mean_mask_iou": _mean(iou for c in images for iou in c.mask_ious),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"match_iou": self.match_iou, "overall": self.overall(),
                "images": [c.to_dict() for c in self.images], "only_in_a": self.only_a, "only_in_b": self.only_b}


def compare_runs(frames_a: Sequence[Frame], frames_b: Sequence[Frame],
                 match_iou: float = DEFAULT_MATCH_IOU) -> Comparison:
    """Pair the two runs' Frames by output name (else source) and compare each pair."""
    def key(frame: Frame) -> str:
        return frame.name or frame.source

    by_b = {key(f): f for f in frames_b}
    by_a = {key(f): f for f in frames_a}
    images = [compare_frames(f, by_b[key(f)], match_iou) for f in frames_a if key(f) in by_b]
    return Comparison(images=images, only_a=sorted(by_a.keys() - by_b.keys()),
                      only_b=sorted(by_b.keys() - by_a.keys()), match_iou=match_iou)


def is_run_folder(path: str | os.PathLike[str]) -> bool:
    """An earlier `recognize run` output folder (it holds the run's summary.json)."""
    return Path(path).is_dir() and (Path(path) / "summary.json").is_file()


def run_summary(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What a side's summary.json says about speed and modes (empty when unreadable)."""
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    processed = summary.get("counts", {}).get("processed") or 0
    seconds = summary.get("seconds")
    stage_seconds = sum(t.get("seconds", 0.0) for t in summary.get("timings", {}).values())
    return {
        "recipe": summary.get("recipe"),
        "fast_modes": summary.get("fast_modes", {}),
        "processed": processed,
        "seconds": seconds,
        "stage_seconds_per_image": round(stage_seconds / processed, 4) if processed else None,
    }


def side_source(path: str) -> str:
    """`recipe` or `run folder`, or an InputError naming what the path should be."""
    if is_run_folder(path):
        return "run folder"
    if Path(path).is_file():
        return "recipe"
    if Path(path).is_dir():
        raise InputError(f"{path}: a folder without summary.json: give a recipe file or a `recognize run` output folder")
    raise InputError(f"{path}: no such recipe file or run folder")


def format_table(comparison: Comparison) -> str:
    """The per-image rows and the overall row as a fixed-width text table."""
    def num(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = f"{'image':<28} {'tags J':>7} {'tag Δ':>7} {'boxes A/B':>10} {'paired':>7} {'box IoU':>8} " \
             f"{'score Δ':>8} {'mask IoU':>9}"
    lines = [header, "-" * len(header)]
    for c in comparison.images:
        counts = f"{c.regions_a}/{c.regions_b}"
        lines.append(f"{c.name[:28]:<28} {num(c.tag_jaccard):>7} {num(c.max_tag_score_diff):>7} "
                     f"{counts:>10} {c.matched:>7} {num(c.mean_box_iou):>8} "
                     f"{num(c.max_region_score_diff):>8} {num(c.mean_mask_iou):>9}")
    o = comparison.overall()
    counts = f"{o['regions_a']}/{o['regions_b']}"
    lines.append("-" * len(header))
    lines.append(f"{'overall':<28} {num(o['tag_jaccard']):>7} {num(o['max_tag_score_diff']):>7} "
                 f"{counts:>10} {o['matched']:>7} {num(o['mean_box_iou']):>8} "
                 f"{num(o['max_region_score_diff']):>8} {num(o['mean_mask_iou']):>9}")
    return "\n".join(lines)
