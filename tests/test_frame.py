"""Frame JSON schema round trip (masks as COCO RLE) and the supervision.Detections round trip."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from supervision.detection.compact_mask import CompactMask
from pycocotools import mask as mask_utils

from recognize.frame import SCHEMA_VERSION, Drop, Frame, Region, Tag, regions_from_detections

REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"))
IMAGES = REFERENCE / "data" / "images"


def ring_mask(h: int, w: int) -> np.ndarray:
    """A mask with a hole and an odd shape, so RLE and polygons are not trivial."""
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    return (r < min(h, w) * 0.4) & (r > min(h, w) * 0.15)


def sample_frame() -> Frame:
    h, w = 48, 64
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    speck = np.zeros((h, w), bool)
    speck[3:9, 40:61] = True
    return Frame.from_array(
        image,
        source="synthetic.png",
        name="sub/synthetic",
        tags=[Tag(name="dog", name_zh="狗", score=0.91, index=3, source="ram"), Tag(name="ball", score=0.72)],
        regions=[
            Region(box=(10.3, 4.1, 50.7, 44.9), score=0.8123, tag="dog", tag_zh="狗", mask=ring_mask(h, w),
                   mask_score=0.95, source="grounding_dino"),
            Region(box=(40.0, 3.0, 61.0, 9.0), score=None, tag="ball", mask=speck),
            Region(box=(0.5, 0.25, 5.0, 6.0), score=0.33, tag="dog", tag_zh="狗"),
        ],
        caption="a dog with a ball",
        dropped=[Drop(item="tag", tag="cat", stage="region_confirm", reason="not confirmed", value=0.1)],
        meta={"k": [1, 2]},
    )


def test_json_round_trip_keeps_everything_and_masks_are_rle() -> None:
    frame = sample_frame()
    text = frame.to_json()
    data = json.loads(text)
    assert data["schema_version"] == SCHEMA_VERSION
    rle = data["regions"][0]["mask"]
    assert set(rle) == {"size", "counts"} and isinstance(rle["counts"], str) and rle["size"] == [48, 64]
    # pycocotools itself decodes what we wrote to the very same mask
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), frame.regions[0].mask)
    assert data["regions"][2]["mask"] is None
    assert "狗" in text  # written as UTF-8, not \u escapes

    back = Frame.from_json(text)
    assert back.model_dump(exclude={"regions"}) == frame.model_dump(exclude={"regions"})
    for a, b in zip(back.regions, frame.regions):
        assert a.model_dump(exclude={"mask"}) == b.model_dump(exclude={"mask"})
        assert (a.mask is None) == (b.mask is None)
        if a.mask is not None:
            assert a.mask.dtype == bool
            np.testing.assert_array_equal(a.mask, b.mask)
    assert back.to_json() == text


def test_json_rejects_unknown_fields_and_schema_names_the_version() -> None:
    data = json.loads(sample_frame().to_json())
    data["regions"][0]["colour"] = "red"
    with pytest.raises(ValueError, match="colour"):
        Frame.from_json(json.dumps(data))
    assert "schema_version" in Frame.json_schema()["properties"]


def test_empty_frame_round_trips() -> None:
    frame = Frame(source="empty.jpg", width=10, height=5)
    assert Frame.from_json(frame.to_json()) == frame
    detections = frame.to_detections()
    assert len(detections) == 0 and isinstance(detections, sv.Detections)
    back = Frame.from_detections(detections, source="empty.jpg", width=10, height=5)
    assert back.regions == [] and back.width == 10


def test_to_detections_holds_boxes_scores_names_and_masks() -> None:
    frame = sample_frame()
    det = frame.to_detections()
    assert len(det) == 3
    np.testing.assert_array_equal(det.xyxy, np.array([r.box for r in frame.regions]))
    assert np.isnan(det.confidence[1]) and det.confidence[0] == pytest.approx(0.8123)
    assert list(det.data["class_name"]) == ["dog", "ball", "dog"]
    assert list(det.class_id) == [0, 1, 0]
    assert list(det.data["class_name_zh"]) == ["狗", "", "狗"]
    assert det.mask.shape == (3, 48, 64)
    assert not det.mask[2].any()  # the region without a mask is padded with an empty one
    np.testing.assert_array_equal(det.mask[0], frame.regions[0].mask)


def test_compact_masks_hold_the_same_pixels() -> None:
    frame = sample_frame()
    h, w = frame.height, frame.width
    overrun = np.zeros((h, w), bool)
    overrun[2:40, 1:60] = True  # far outside its region's box: cut to its own pixels, not the box
    frame.regions.append(Region(box=(10.0, 10.0, 12.0, 12.0), tag="cat", mask=overrun))
    frame.regions.append(Region(box=(0.0, 0.0, 5.0, 5.0), tag="cat", mask=np.zeros((h, w), bool)))  # empty
    dense, compact = frame.to_detections(), frame.to_detections(compact_masks=True)
    assert isinstance(compact.mask, CompactMask) and compact.mask.shape == dense.mask.shape == (5, h, w)
    np.testing.assert_array_equal(np.asarray(compact.mask), dense.mask)
    np.testing.assert_array_equal(compact.area, dense.area)  # what supervision orders masks by
    np.testing.assert_array_equal(compact.xyxy, dense.xyxy)
    assert not frame.to_detections(compact_masks=True).mask[2].any()  # no mask: an empty one


def test_detections_round_trip_is_exact() -> None:
    frame = sample_frame()
    back = Frame.from_detections(frame.to_detections(), source=frame.source)
    assert (back.width, back.height) == (64, 48)  # taken from the masks
    assert len(back.regions) == len(frame.regions)
    for a, b in zip(back.regions, frame.regions):
        assert a.model_dump(exclude={"mask"}) == b.model_dump(exclude={"mask"})
        assert (a.mask is None) == (b.mask is None)
        if b.mask is not None:
            np.testing.assert_array_equal(a.mask, b.mask)


def test_supervision_operations_apply_to_frames() -> None:
    frame = sample_frame()
    det = frame.to_detections()
    kept = det[det.area > 100]  # supervision filtering, then back into the frame
    frame.set_detections(kept, source="filtered")
    assert [r.tag for r in frame.regions] == ["dog", "ball"]
    assert all(r.source == "filtered" for r in frame.regions)


def test_from_plain_detections_without_names() -> None:
    det = sv.Detections(xyxy=np.array([[1.0, 2.0, 3.0, 4.0]]), class_id=np.array([7]))
    (region,) = regions_from_detections(det)
    assert region.tag == "7" and region.score is None and region.mask is None
    (region,) = regions_from_detections(sv.Detections(xyxy=np.array([[1.0, 2.0, 3.0, 4.0]])))
    assert region.tag == "object"


@pytest.mark.skipif(not IMAGES.is_dir(), reason="reference images not available")
def test_real_photo_loads_lazily_and_serialises_without_pixels() -> None:
    path = sorted(IMAGES.rglob("*.jpg"))[0]
    frame = Frame(source=str(path))
    assert frame.width is None
    h, w = frame.image.shape[:2]
    assert (frame.width, frame.height) == (w, h)
    frame.regions = [Region(box=(0, 0, w / 2, h / 2), tag="thing", mask=np.pad(np.ones((h // 2, w // 2), bool),
                                                                             ((0, h - h // 2), (0, w - w // 2))))]
    text = frame.to_json()
    assert len(text) < 10_000  # the RLE, not the pixels
    back = Frame.from_json(text)
    assert back.regions[0].mask.sum() == (h // 2) * (w // 2)


# -- a stage's input, made ahead (Frame.prepare_ahead / Frame.prepared) -------------------------
def _counting(made: list[int]):
    def make(image: np.ndarray) -> int:
        made.append(1)
        return int(image.sum()) + len(made)

    return make


def test_an_input_made_ahead_is_read_until_dropped_and_one_made_in_the_call_is_not_kept():
    frame = Frame.from_array(np.full((4, 5, 3), 2, np.uint8))
    made: list[int] = []
    frame.prepare_ahead("resized", _counting(made))
    assert frame.prepared("resized", _counting(made)) == 121  # the one made ahead
    assert frame.prepared("resized", _counting(made)) == 121  # still there: a second stage of that input shares it
    assert len(made) == 1
    frame.drop_prepared()  # what the engines do when the batch is done
    assert frame.prepared("resized", _counting(made)) == 122  # made in the call
    assert frame.prepared("resized", _counting(made)) == 123  # and not kept
    assert frame.prepared("other", lambda image: "no entry: made") == "no entry: made"


def test_copies_do_not_share_or_carry_the_inputs():
    import copy

    frame = Frame.from_array(np.zeros((4, 5, 3), np.uint8))
    frame.prepare_ahead("resized", lambda image: "ahead")
    shallow, deep = frame.model_copy(), copy.deepcopy(frame)
    assert shallow._prepared == {} and deep._prepared == {}
    shallow.release_image()
    assert frame.prepared("resized", lambda image: "made") == "ahead"  # the copy's release left the original's


def test_an_input_made_from_another_image_is_not_used():
    frame = Frame.from_array(np.zeros((4, 5, 3), np.uint8))
    frame.prepare_ahead("resized", lambda image: "from the old pixels")
    frame._image = np.ones((4, 5, 3), np.uint8)  # e.g. a server handing the frame other pixels
    assert frame.prepared("resized", lambda image: int(image.sum())) == 60


def test_a_released_image_drops_the_inputs_made_from_it(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.full((6, 7, 3), 9, np.uint8)).save(path)
    frame = Frame(source=str(path))
    frame.prepare_ahead("mean", lambda image: "ahead")
    frame.release_image()
    assert frame._prepared == {}  # nothing of the released pixels stays in memory
    assert frame.prepared("mean", lambda image: float(image.mean())) == 9.0  # decoded again, made again


def test_a_kept_input_is_made_once_per_image_and_kept_read_only():
    frame = Frame.from_array(np.zeros((4, 5, 3), np.uint8))
    made: list[int] = []

    def half(image: np.ndarray) -> np.ndarray:
        made.append(1)
        return image[::2, ::2].copy()

    frame.prepare_ahead("half", half)
    frame.prepare_ahead("half", half)  # a second stage of the same input: nothing made again
    assert len(made) == 1
    kept = frame.prepared("half", half)
    with pytest.raises(ValueError, match="read-only"):
        kept[0, 0, 0] = 1  # every stage of that key, and a retried batch, reads this very array
