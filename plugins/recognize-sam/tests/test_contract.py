"""The `sam` stage keeps recognize's plugin contract (recognize.testing), as any third-party
segmenter must: parameters, a batch equal to its frames one by one, frames back in order, masks of
the frame's size on regions whose tags the frame has."""

from __future__ import annotations

import numpy as np
import pytest
from sam_support import TINY, random_boxes

from recognize import Region, Tag
from recognize.stage import shared_models
from recognize.testing import check_stage, sample_frames
from recognize_sam import Sam


@pytest.fixture(autouse=True)
def _fresh_models():
    yield
    shared_models.clear()


def frames_with_boxes():
    frames = sample_frames(((48, 64), (80, 40), (37, 37)))
    for i, frame in enumerate(frames):
        frame.tags = [Tag(name="dog"), Tag(name="ball")]
        boxes = random_boxes(frame.height, frame.width, 1 + i % 3, seed=i)
        frame.regions = [Region(box=tuple(float(v) for v in box), tag=["dog", "ball"][k % 2])
                         for k, box in enumerate(boxes)]
    frames[2].regions = []  # a frame with nothing to segment sits in the batch too
    return frames


@pytest.mark.slow
def test_sam_keeps_the_contract():
    out = check_stage(lambda: Sam(**TINY, batch_size=4), frames_with_boxes())
    masks = [r.mask for f in out for r in f.regions]
    assert masks and all(m is not None and m.dtype == bool for m in masks)
    assert any(np.count_nonzero(m) for m in masks)  # real masks were compared, not empty ones
