"""Synthetic frames shared by the output tests (hand-made regions and masks on numpy images)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from recognize.frame import Frame, Region, Tag

REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", Path(__file__).resolve().parents[3] / "shared" / "reference"))
IMAGES = REFERENCE / "data" / "images"


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(yy - cy, xx - cx) < r


def make_frame(name: str = "scene", seed: int = 0, scale: int = 1) -> Frame:
    """An 80x60 (times `scale`) frame with two masked regions of different tags and one box-only region."""
    h, w, s = 60 * scale, 80 * scale, scale
    rng = np.random.default_rng(seed)
    image = (rng.random((h, w, 3)) * 60 + 100).astype(np.uint8)
    dog = disc(h, w, 30 * s, 25 * s, 14 * s)
    ball = disc(h, w, 15 * s, 62 * s, 7 * s)
    return Frame.from_array(
        image,
        source=f"/data/in/{name}.jpg",
        name=name,
        tags=[Tag(name="dog", name_zh="狗", score=0.93), Tag(name="ball", name_zh="球", score=0.71),
              Tag(name="grass", score=0.6)],
        regions=[
            Region(box=(11.0 * s, 16.0 * s, 39.0 * s, 44.0 * s), score=0.88, tag="dog", tag_zh="狗", mask=dog),
            Region(box=(55.0 * s, 8.0 * s, 69.0 * s, 22.0 * s), score=0.64, tag="ball", tag_zh="球", mask=ball),
            Region(box=(2.0 * s, 50.0 * s, 78.0 * s, 59.0 * s), score=0.41, tag="grass"),
        ],
        caption="a dog next to a ball on the grass",
    )


@pytest.fixture
def frame() -> Frame:
    return make_frame()


@pytest.fixture
def frame_factory():
    return make_frame
