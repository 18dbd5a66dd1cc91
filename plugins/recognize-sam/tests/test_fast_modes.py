"""Fast modes of the `sam` stage: opt-in, and close to the exact path within stated tolerances.

Tolerances (tiny seeded random SAM, a real photo, 6 boxes): every mask's IoU with the exact
path's mask >= 0.97 under bf16 autocast and >= 0.98 with int8 Linear layers in the image encoder
(measured: >= 0.988 / >= 0.996); SAM's predicted IoU within 0.01.
"""

from __future__ import annotations

import numpy as np
import pytest
from sam_support import TINY, random_boxes

from recognize import Frame, Region
from recognize.fast_modes import REASON_MAX_REGIONS, active_fast_modes
from recognize_sam import Sam


def _frame(photo) -> Frame:
    frame = Frame(source=str(photo))
    height, width = frame.image.shape[:2]
    boxes = random_boxes(height, width, 6, seed=0)
    frame.regions = [Region(box=tuple(box), score=0.1 * (i + 1), tag="dog") for i, box in enumerate(boxes)]
    return frame


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize(("mode", "min_iou"), [({"dtype": "bfloat16"}, 0.97), ({"quantize": "int8"}, 0.98)])
def test_fast_mode_masks_match_the_exact_path(small_photo, mode, min_iou):
    if mode.get("quantize"):
        pytest.importorskip("torchao")
    exact_stage, fast_stage = Sam(**TINY), Sam(**TINY, **mode)
    assert active_fast_modes(exact_stage) == {} and active_fast_modes(fast_stage) == mode
    exact = exact_stage([_frame(small_photo)])[0]
    fast = fast_stage([_frame(small_photo)])[0]
    if mode.get("quantize"):
        assert fast_stage.segmenter.sam is not exact_stage.segmenter.sam  # never shared with the exact model
    scores = [(a.mask_score, b.mask_score) for a, b in zip(exact.regions, fast.regions)]
    assert any(a != b for a, b in scores)  # the mode really changed the computation
    for a, b in zip(exact.regions, fast.regions):
        assert a.box == b.box and a.mask.any()
        assert _iou(a.mask, b.mask) >= min_iou
        assert abs(a.mask_score - b.mask_score) <= 0.01


def test_max_regions_segments_only_the_best_regions(small_photo):
    exact = Sam(**TINY)([_frame(small_photo)])[0]
    capped = Sam(**TINY, max_regions=2)([_frame(small_photo)])[0]
    # scores rise with the index: the last two are the best, and they keep exactly their exact-path masks
    assert [r.box for r in capped.regions] == [r.box for r in exact.regions[-2:]]
    for a, b in zip(exact.regions[-2:], capped.regions):
        assert np.array_equal(a.mask, b.mask)
    drops = capped.dropped
    assert [d.box for d in drops] == [r.box for r in exact.regions[:4]]
    assert all(d.reason == REASON_MAX_REGIONS and d.stage == "sam" and d.item == "region" for d in drops)
