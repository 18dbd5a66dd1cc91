"""COCO box and mask scoring of Frames (pycocotools' COCOeval), on hand-made ground truth."""

import json

import numpy as np
import pytest

from recognize.errors import InputError
from recognize.eval.regions import STAT_NAMES, evaluate_regions, load_ground_truth, read_frames, run_on_ground_truth
from recognize.frame import Frame, Region, mask_to_rle
from recognize.pipeline import Pipeline


def box_mask(h, w, box):
    mask = np.zeros((h, w), dtype=bool)
    x0, y0, x1, y1 = (int(round(v)) for v in box)  # as teststages.BoxMask
    mask[y0:y1, x0:x1] = True
    return mask


def write_coco(path, images, objects, categories=("cat", "dog")):
    """images: [(file_name, w, h)]; objects: [(image index, category name, xyxy box)]."""
    annotations = []
    for number, (image, category, box) in enumerate(objects, 1):
        _, w, h = images[image]
        x0, y0, x1, y1 = box
        annotations.append({"id": number, "image_id": image + 1, "category_id": categories.index(category) + 1,
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                            "segmentation": mask_to_rle(box_mask(h, w, box))})
    path.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(images)],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)],
    }))
    return path


IMAGES = [("a/one.jpg", 64, 48), ("two.png", 40, 40)]
OBJECTS = [(0, "cat", (8, 8, 40, 40)), (1, "dog", (4, 4, 24, 30))]


def frame(source, w, h, *regions):
    return Frame(source=source, width=w, height=h, regions=[
        Region(tag=tag, box=box, score=score, mask=box_mask(h, w, box) if masked else None)
        for tag, box, score, masked in regions])


def test_perfect_predictions_score_one(tmp_path):
    gt = write_coco(tmp_path / "gt.json", IMAGES, OBJECTS)
    frames = [frame(str(tmp_path / "imgs" / "a" / "one.jpg"), 64, 48, ("cat", (8, 8, 40, 40), 0.9, True)),
              frame("elsewhere/two.png", 40, 40, ("Dog", (4, 4, 24, 30), None, True))]  # base name, any case
    result = evaluate_regions(frames, gt, images_dir=tmp_path / "imgs")
    assert set(result.stats) == {"bbox", "segm"}  # masks present: both scored
    for kind in ("bbox", "segm"):
        assert result.stats[kind]["AP"] == pytest.approx(1.0)
        assert result.stats[kind]["AP50"] == pytest.approx(1.0)
        assert list(result.stats[kind]) == list(STAT_NAMES)
        assert "Average Precision" in result.reports[kind]
    assert result.images_evaluated == 2 and result.regions == 2 and not result.missing


def test_known_partial_score(tmp_path):
    # two cats; one found (score 0.9), one box misplaced (0.8): recall 0.5 at precision 1
    images = [("p.jpg", 64, 64), ("q.jpg", 64, 64)]
    gt = write_coco(tmp_path / "gt.json", images, [(0, "cat", (0, 0, 32, 32)), (1, "cat", (0, 0, 32, 32))])
    frames = [frame("p.jpg", 64, 64, ("cat", (0, 0, 32, 32), 0.9, False)),
              frame("q.jpg", 64, 64, ("cat", (32, 32, 64, 64), 0.8, False))]
    result = evaluate_regions(frames, gt)
    assert list(result.stats) == ["bbox"]  # no mask predicted
    # COCO's 101-point interpolation: precision 1 for recall 0..0.5 (51 points), 0 above
    assert result.stats["bbox"]["AP"] == pytest.approx(51 / 101)
    assert result.stats["bbox"]["AR100"] == pytest.approx(0.5)


def test_left_out_things_are_reported(tmp_path):
    gt = write_coco(tmp_path / "gt.json", IMAGES, OBJECTS)
    frames = [frame("one.jpg", 64, 48, ("cat", (8, 8, 40, 40), 0.9, False), ("teapot", (0, 0, 5, 5), 0.5, False),
                    ("teapot", (1, 1, 5, 5), 0.4, False)),
              frame("three.jpg", 64, 48, ("cat", (8, 8, 40, 40), 0.9, False))]
    result = evaluate_regions(frames, gt)
    assert result.missing == ["two.png"]  # evaluated on the images that have a frame
    assert result.unmatched_frames == ["three.jpg"]
    assert result.unknown_tags == {"teapot": 2}
    assert result.stats["bbox"]["AP"] == pytest.approx(1.0)  # dog has no GT on the evaluated image: -1, ignored
    summary = result.summary()
    assert summary["images_missing"] == 1 and summary["regions_with_unknown_tags"] == 2


def test_no_detections_score_zero(tmp_path):
    gt = write_coco(tmp_path / "gt.json", IMAGES, OBJECTS)
    result = evaluate_regions([frame("one.jpg", 64, 48), frame("two.png", 40, 40)], gt, iou_types=["bbox", "segm"])
    assert result.stats["bbox"]["AP"] == 0.0 and result.stats["segm"]["AP"] == 0.0


def test_errors(tmp_path):
    gt = write_coco(tmp_path / "gt.json", IMAGES, OBJECTS)
    with pytest.raises(InputError, match="no frame matches an image"):
        evaluate_regions([frame("zzz.jpg", 4, 4)], gt)
    wrong = Frame(source="one.jpg", regions=[Region(tag="cat", box=(0, 0, 4, 4), mask=np.ones((4, 4), bool))])
    with pytest.raises(InputError, match="mask is 4x4 but the ground truth image is 64x48"):
        evaluate_regions([wrong], gt)
    with pytest.raises(InputError, match="two frames .* match the same ground truth image"):
        evaluate_regions([frame("one.jpg", 64, 48), frame("x/one.jpg", 64, 48)], gt)
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(InputError, match="needs `images`, `annotations` and `categories`"):
        evaluate_regions([], tmp_path / "bad.json")
    with pytest.raises(InputError, match="no such COCO annotation file"):
        evaluate_regions([], tmp_path / "absent.json")


def test_run_recipe_on_ground_truth_images(test_stages, image_folder, tmp_path):
    # teststages: brightness tags the image, center_box boxes its central half, box_mask fills the box
    (image_folder / "broken.png").write_bytes(b"garbage")
    images = [("white.png", 60, 40), ("black.jpg", 30, 50), ("gone.jpg", 10, 10), ("broken.png", 8, 8)]
    objects = [(0, "bright", (15, 10, 45, 30)), (1, "dark", (7.5, 12.5, 22.5, 37.5)), (2, "dark", (0, 0, 5, 5)),
               (3, "dark", (0, 0, 5, 5))]
    gt = write_coco(tmp_path / "gt.json", images, objects, categories=("bright", "dark"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("recipe: 1\nsettings: {batch_size: 1}\n"
                      "stages: [{use: brightness}, {use: center_box}, {use: box_mask}]\n")
    frames, missing, unreadable = run_on_ground_truth(Pipeline.from_recipe(recipe), gt, image_folder)
    assert [f.name for f in frames] == ["white", "black"] and all(f._image is None for f in frames)
    assert missing == ["gone.jpg"] and [name for name, _ in unreadable] == ["broken.png"]
    result = evaluate_regions(frames, gt, images_dir=image_folder)
    assert result.stats["bbox"]["AP"] == pytest.approx(1.0)
    assert result.stats["segm"]["AP"] == pytest.approx(1.0)
    assert sorted(result.missing) == ["broken.png", "gone.jpg"]
    # a ground truth loaded once serves both steps alike
    coco = load_ground_truth(gt)
    again, _, _ = run_on_ground_truth(Pipeline.from_recipe(recipe), gt, image_folder, coco=coco)
    assert [[r.box for r in f.regions] for f in again] == [[r.box for r in f.regions] for f in frames]
    assert evaluate_regions(again, gt, images_dir=image_folder, coco=coco).stats == result.stats


def test_read_frames_from_a_run_folder(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "one.json").write_text(frame("one.jpg", 64, 48, ("cat", (8, 8, 40, 40), 0.9, True)).to_json())
    (out / "sub" / "two.json").write_text(frame("sub/two.png", 40, 40).to_json())
    (out / "summary.json").write_text('{"counts": {}}')
    (out / "coco.json").write_text('{"images": []}')  # another output's JSON, not a Frame
    frames = read_frames(out)
    assert [f.source for f in frames] == ["one.jpg", "sub/two.png"]
    assert frames[0].regions[0].mask.sum() == 32 * 32
    with pytest.raises(InputError, match="no such predictions folder"):
        read_frames(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Frame JSON files"):
        read_frames(tmp_path / "empty")


def test_masks_without_mask_ground_truth(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1, "file_name": "one.jpg", "width": 64, "height": 48}],
                              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 8, 32, 32]}],
                              "categories": [{"id": 1, "name": "cat"}]}))
    frames = [frame("one.jpg", 64, 48, ("cat", (8, 8, 40, 40), 0.9, True))]
    assert list(evaluate_regions(frames, gt).stats) == ["bbox"]  # auto: boxes only
    with pytest.raises(InputError, match="mask scoring needs a `segmentation`"):
        evaluate_regions(frames, gt, iou_types=["segm"])
