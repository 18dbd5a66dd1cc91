"""recognize.eval.compare: tag, box and mask agreement of two results for the same images."""

from __future__ import annotations

import numpy as np
import pytest

from recognize.eval.compare import compare_frames, compare_runs, format_table, match_regions
from recognize.frame import Frame, Region, Tag


def _mask(box, shape=(40, 40)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    mask[y0:y1, x0:x1] = True
    return mask


def _frame(name, tags, boxes, with_masks=True) -> Frame:
    return Frame(source=f"{name}.jpg", name=name, tags=[Tag(name=n, score=s) for n, s in tags],
                 regions=[Region(box=box, score=score, tag=tag, mask=_mask(box) if with_masks else None)
                          for tag, box, score in boxes])


def test_identical_results_agree_fully():
    frame = _frame("x", [("dog", 0.9), ("cat", 0.7)], [("dog", (0, 0, 10, 10), 0.8), ("cat", (20, 20, 30, 30), 0.6)])
    c = compare_frames(frame, frame.model_copy(deep=True))
    assert (c.tag_jaccard, c.max_tag_score_diff, c.matched, c.unmatched_a, c.unmatched_b) == (1.0, 0.0, 2, 0, 0)
    assert c.mean_box_iou == 1.0 and c.mean_mask_iou == 1.0 and c.max_region_score_diff == 0.0


def test_tags_boxes_and_masks_that_differ():
    a = _frame("x", [("dog", 0.9), ("cat", 0.7), ("sky", 0.5)],
               [("dog", (0, 0, 10, 10), 0.8), ("cat", (20, 20, 30, 30), 0.6), ("dog", (30, 0, 40, 10), 0.5)])
    b = _frame("x", [("dog", 0.85), ("cat", 0.75), ("tree", 0.6)],
               [("dog", (0, 0, 10, 8), 0.7), ("cat", (0, 0, 10, 10), 0.6)])  # the cat box lies on A's dog box
    c = compare_frames(a, b)
    assert c.tag_jaccard == pytest.approx(2 / 4)
    assert c.max_tag_score_diff == pytest.approx(0.05)
    # dog/dog paired (IoU 0.8), the cat boxes do not overlap, A's second dog has no partner
    assert (c.matched, c.unmatched_a, c.unmatched_b) == (1, 2, 1)
    assert c.mean_box_iou == pytest.approx(0.8) and c.mean_mask_iou == pytest.approx(0.8)
    assert c.max_region_score_diff == pytest.approx(0.1)


def test_pairs_maximise_the_total_iou_not_greedy_order():
    # greedy from A's first box would take B's first box (IoU 0.6 > 0.5) and leave A's second unpaired
    a = [Region(box=(0, 0, 10, 10), tag="t"), Region(box=(4, 0, 14, 10), tag="t")]
    b = [Region(box=(2.5, 0, 12.5, 10), tag="t"), Region(box=(-2, 0, 8, 10), tag="t")]
    pairs = match_regions(a, b, match_iou=0.5)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (1, 0)]
    assert all(iou >= 0.5 for _, _, iou in pairs)


def test_runs_pair_images_by_name_and_total_over_regions():
    a = [_frame("one", [("dog", 0.9)], [("dog", (0, 0, 10, 10), 0.8)]),
         _frame("two", [("dog", 0.9)], [("dog", (0, 0, 10, 10), 0.8), ("dog", (20, 20, 30, 30), 0.8)]),
         _frame("only_a", [], [])]
    b = [_frame("two", [("dog", 0.9)], [("dog", (0, 0, 10, 5), 0.8), ("dog", (20, 20, 30, 30), 0.8)]),
         _frame("one", [("dog", 0.9)], [("dog", (0, 0, 10, 10), 0.8)])]
    comparison = compare_runs(a, b)
    assert [c.name for c in comparison.images] == ["one", "two"]
    assert comparison.only_a == ["only_a"] and comparison.only_b == []
    overall = comparison.overall()
    assert overall["matched"] == 3 and overall["unmatched_a"] == 0
    assert overall["mean_box_iou"] == pytest.approx((1 + 0.5 + 1) / 3)  # over regions, not images
    table = format_table(comparison)
    assert table.splitlines()[-1].startswith("overall") and "3/3" in table


def test_frames_without_masks_compare_boxes_only():
    a = _frame("x", [("dog", 0.9)], [("dog", (0, 0, 10, 10), 0.8)], with_masks=False)
    c = compare_frames(a, a.model_copy(deep=True))
    assert c.matched == 1 and c.masks_compared == 0 and c.mean_mask_iou is None
