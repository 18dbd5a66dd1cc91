"""The `grounding_dino` stage keeps recognize's plugin contract (recognize.testing), as any
third-party localizer must: parameters, a batch equal to its frames one by one (images of different
sizes padded together), frames back in order, every region on one of the frame's tags, boxes inside."""

from __future__ import annotations

import pytest

from recognize import Tag
from recognize.stage import shared_models
from recognize.testing import check_stage, sample_frames
from recognize_grounding_dino.stage import GroundingDino


@pytest.fixture(autouse=True)
def _fresh_models():
    yield
    shared_models.clear()


def tagged_frames():
    frames = sample_frames(((48, 64), (80, 40), (37, 37)))
    for i, frame in enumerate(frames):
        frame.tags = [Tag(name=name) for name in (["dog", "person"], ["red car", "tree"], ["traffic light"])[i]]
    return frames


@pytest.mark.slow
@pytest.mark.parametrize("classes", [None, ["dog", "street sign"]])
def test_grounding_dino_keeps_the_contract(tiny_checkpoint, vocab, tiny, classes):
    params = {"checkpoint": str(tiny_checkpoint), "vocab": str(vocab), "config": tiny, "device": "cpu",
              "image_size": 64, "max_size": 112, "box_threshold": 0.2, "text_threshold": 0.0, "batch_size": 3,
              "classes": classes}
    out = check_stage(lambda: GroundingDino(**params), tagged_frames())
    assert any(frame.regions for frame in out)  # boxes were found, so they were compared
