"""`add_localized_regions`: the one rule set every localizer applies to its raw boxes."""

from __future__ import annotations

import numpy as np
import pytest
import supervision as sv

from recognize.detections import add_localized_regions
from recognize.frame import Frame, Tag

# two overlapping boxes of different tags (IoU 0.82) and one of the first tag far away
BOXES = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60]], dtype=np.float64)


def _frame() -> Frame:
    return Frame(source="x.jpg", width=64, height=64, tags=[Tag(name="cat", name_zh="猫", score=0.9)])


def _found(scores=(0.5, 0.8, 0.3), classes=(0, 1, 0)) -> sv.Detections:
    return sv.Detections(xyxy=BOXES.copy(), confidence=np.array(scores), class_id=np.array(classes),
                         data={"tag_score": np.array([0.7, 0.6, 0.4])})


@pytest.mark.parametrize(("nms", "kept"), [("per_tag", 3), ("cross_tag", 2), ("none", 3)])
def test_nms_modes(nms, kept):
    frame = _frame()
    add_localized_regions(frame, _found(), ["cat", "dog"], "loc", nms=nms, nms_threshold=0.5)
    assert len(frame.regions) == kept
    if nms == "cross_tag":  # the weaker of the overlapping pair is gone, whatever its tag
        assert [r.tag for r in frame.regions] == ["dog", "cat"]


def test_regions_in_score_order_with_chinese_names_meta_and_new_tags():
    frame = _frame()
    add_localized_regions(frame, _found(), ["cat", "dog"], "loc", nms="none", nms_threshold=0.5,
                          meta_keys=("tag_score",))
    assert [r.score for r in frame.regions] == [0.8, 0.5, 0.3]
    assert [(r.tag, r.tag_zh, r.source) for r in frame.regions] == [("dog", None, "loc"), ("cat", "猫", "loc"),
                                                                   ("cat", "猫", "loc")]
    assert [r.meta for r in frame.regions] == [{"tag_score": 0.6}, {"tag_score": 0.7}, {"tag_score": 0.4}]
    # "dog" came from a fixed class list: the frame gets it, scored by its best box; "cat" is not repeated
    assert [(t.name, t.score, t.source) for t in frame.tags] == [("cat", 0.9, None), ("dog", 0.8, "loc")]


def test_nothing_found_changes_nothing():
    frame = _frame()
    add_localized_regions(frame, sv.Detections.empty(), ["cat"], "loc", nms="per_tag", nms_threshold=0.5)
    assert frame.regions == [] and [t.name for t in frame.tags] == ["cat"]
