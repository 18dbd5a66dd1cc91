"""`tiled` around the real localizer plugins (tiny random models): it runs, and every box it
returns is the inner stage's box on the whole image or on one slice, moved by that slice's
offset. The expected boxes are computed here by cutting the slices by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from recognize_tiles import Tiled

from recognize import Frame, Pipeline, Tag
from recognize.images import load_image

PLUGINS = Path(__file__).resolve().parents[2]
REFERENCE = PLUGINS.parent.parent / "shared" / "reference"
TAGS = [Tag(name="dog", name_zh="狗"), Tag(name="grass"), Tag(name="person")]
# demo4 is 428 x 640: tiles of 300 x 400 with 60 x 80 overlap start at x 0, 128 and y 0, 240
TILE, OVERLAP = (300, 400), (60, 80)
STARTS = [(x, y) for y in (0, 240) for x in (0, 128)]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import os

    path = Path(os.environ.get("RECOGNIZE_REFERENCE", REFERENCE)) / "data" / "images" / "demo" / "demo4.jpg"
    if not path.is_file():
        pytest.skip(f"reference photo not found at {path}")
    return load_image(path)


def found_by_hand(inner, image: np.ndarray) -> list[tuple]:
    """The inner stage on the whole image and on each hand-cut slice, boxes moved by the slice's offset."""
    pieces = [(image, 0, 0)] + [(image[y : y + TILE[1], x : x + TILE[0]], x, y) for x, y in STARTS]
    found = []
    for crop, x, y in pieces:
        (out,) = inner([Frame.from_array(crop.copy(), tags=[t.model_copy() for t in TAGS])])
        for r in out.regions:
            assert 0 <= r.box[0] <= r.box[2] <= crop.shape[1] and 0 <= r.box[1] <= r.box[3] <= crop.shape[0]
            found.append((r.tag, r.box[0] + x, r.box[1] + y, r.box[2] + x, r.box[3] + y, r.score))
    return found


def assert_tiling_maps_boxes_back(localizer: dict, image: np.ndarray) -> None:
    # iou_threshold 1.0: nothing is a duplicate, so the output is exactly the union of all passes
    stage = Tiled(localizer=localizer, tile=TILE, overlap=OVERLAP, iou_threshold=1.0, batch_size=2, device="cpu")
    (out,) = Pipeline([stage])([Frame.from_array(image, source="demo4", tags=[t.model_copy() for t in TAGS])])
    stage.inner.ensure_loaded()
    expected = sorted(found_by_hand(stage.inner, image))
    got = sorted((r.tag, *r.box, r.score) for r in out.regions)
    assert len(expected) > 4 and len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1:], b[1:], atol=1e-3)
    names = {t.name: t.name_zh for t in TAGS}
    assert all(r.tag_zh == names[r.tag] for r in out.regions)


@pytest.fixture(scope="module")
def tiny_grounding_dino(tmp_path_factory):
    pytest.importorskip("recognize_grounding_dino")
    sys.path.insert(0, str(PLUGINS / "recognize-grounding-dino" / "tests"))
    from gd_support import write_tiny_checkpoint

    return {**write_tiny_checkpoint(tmp_path_factory.mktemp("gd")), "box_threshold": 0.0, "text_threshold": 0.0, "image_size": 128, "max_size": 192}


@pytest.mark.slow
def test_grounding_dino_tiled(tiny_grounding_dino, photo):
    assert_tiling_maps_boxes_back({"use": "grounding_dino", "with": tiny_grounding_dino}, photo)


@pytest.mark.slow
def test_owlv2_tiled(photo):
    pytest.importorskip("recognize_owlv2")
    sys.path.insert(0, str(PLUGINS / "recognize-owlv2" / "tests"))
    from owl_support import TINY

    assert_tiling_maps_boxes_back({"use": "owlv2", "with": {**TINY, "box_threshold": 0.3, "nms": "none"}}, photo)
