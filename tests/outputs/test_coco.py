"""The `coco` output: one dataset file that pycocotools loads and evaluates."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from recognize.frame import Frame, Region
from recognize.outputs.coco import CocoOutput

from .conftest import IMAGES


def load_coco(path: Path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def evaluate(gt: COCO, results: list[dict], iou_type: str) -> float:
    """COCO AP of `results` against `gt` (pycocotools' own evaluation)."""
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def build(tmp_path: Path, frames: list[Frame], **params) -> tuple[Path, dict]:
    stage = CocoOutput(**params)
    assert stage.files(frames[0], tmp_path) == []  # dataset-level only
    stage.finish(frames, tmp_path)
    path = tmp_path / stage.params.filename
    return path, json.loads(path.read_text(encoding="utf-8"))


def test_dataset_fields_and_masks(tmp_path: Path, frame_factory) -> None:
    first, second = frame_factory("one"), frame_factory("sub/two", seed=1)
    second.regions = [r for r in second.regions if r.tag != "dog"] + [
        Region(box=(1.0, 1.0, 5.0, 5.0), score=0.5, tag="cat")
    ]
    empty = Frame(source="/data/in/three.png", name="three", width=20, height=10)
    path, data = build(tmp_path, [first, second, empty])

    assert [c["name"] for c in data["categories"]] == ["ball", "cat", "dog", "grass"]
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4]
    assert data["categories"][2]["name_zh"] == "狗" and "name_zh" not in data["categories"][1]
    assert [i["file_name"] for i in data["images"]] == ["one.jpg", "sub/two.jpg", "three.png"]
    assert data["images"][0]["tags"][0] == {"name": "dog", "name_zh": "狗", "score": 0.93}
    assert data["images"][0]["caption"] == first.caption and "caption" not in data["images"][2]
    assert [a["id"] for a in data["annotations"]] == list(range(1, 7))

    coco = load_coco(path)
    assert sorted(coco.getImgIds()) == [1, 2, 3] and coco.getAnnIds(imgIds=[3]) == []
    dog_ann = coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=coco.getCatIds(catNms=["dog"])))[0]
    assert dog_ann["bbox"] == [11.0, 16.0, 28.0, 28.0] and dog_ann["iscrowd"] == 0 and dog_ann["score"] == 0.88
    # the RLE decodes back to the very mask the frame holds
    np.testing.assert_array_equal(coco.annToMask(dog_ann).astype(bool), first.regions[0].mask)
    assert dog_ann["area"] == first.regions[0].mask.sum()
    grass = coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=coco.getCatIds(catNms=["grass"])))[0]
    assert "segmentation" not in grass and grass["area"] == 76.0 * 9.0  # box-only region: no invented polygon


def test_cocoeval_scores_the_file(tmp_path: Path, frame_factory) -> None:
    frames = [frame_factory("a"), frame_factory("b", seed=2)]
    path, data = build(tmp_path, frames)
    gt = load_coco(path)
    perfect = [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in data["annotations"]]
    assert evaluate(gt, perfect, "bbox") == pytest.approx(1.0)
    shifted = [{**r, "bbox": [r["bbox"][0] + r["bbox"][2] * 0.6, *r["bbox"][1:]]} for r in perfect]
    assert evaluate(gt, shifted, "bbox") < 0.5  # the evaluation is real: wrong boxes score low

    for frame in frames:  # segm evaluation needs every region to carry a mask
        frame.regions = [r for r in frame.regions if r.mask is not None]
    path, data = build(tmp_path, frames, filename="masks.json")
    gt = load_coco(path)
    segm = [{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")} for a in data["annotations"]]
    assert evaluate(gt, segm, "segm") == pytest.approx(1.0)


def test_image_root_makes_file_names_relative(tmp_path: Path, frame_factory) -> None:
    frame = frame_factory("x")
    frame.source = str(tmp_path / "pics" / "deep" / "x.jpg")
    _, data = build(tmp_path, [frame], image_root=str(tmp_path / "pics"))
    assert data["images"][0]["file_name"] == "deep/x.jpg"


def test_resumed_frames_need_no_pixels(tmp_path: Path, frame_factory) -> None:
    # frames a resumed run reads back from their JSON carry size and masks, not pixels
    frames = [Frame.from_json(frame_factory(n).to_json()) for n in ("a", "b")]
    for frame in frames:
        frame.source = "/nonexistent/on/purpose.jpg"
    _, data = build(tmp_path, frames)
    assert len(data["annotations"]) == 6 and all(f._image is None for f in frames)


@pytest.mark.skipif(not IMAGES.is_dir(), reason="reference images not available")
def test_frame_without_size_is_measured_from_its_image(tmp_path: Path) -> None:
    path = sorted(IMAGES.rglob("*.jpg"))[0]
    frame = Frame(source=str(path), regions=[Region(box=(10, 20, 110, 220), score=0.9, tag="thing")])
    _, data = build(tmp_path, [frame], image_root=str(IMAGES))
    image = data["images"][0]
    assert image["file_name"] == path.relative_to(IMAGES).as_posix()
    assert (image["width"], image["height"]) == (frame.width, frame.height) and frame.width > 0
    assert frame._image is None  # decoded for its size, then let go
