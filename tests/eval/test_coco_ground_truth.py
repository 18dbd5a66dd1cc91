"""Malformed COCO ground truth is one line naming the place, before pycocotools sees it."""

import json

import numpy as np
import pytest

from recognize.errors import InputError
from recognize.eval.coco_ground_truth import (
    read_ground_truth,
    rle_string_counts,
    validate_ground_truth,
)
from recognize.eval.regions import load_ground_truth
from recognize.frame import mask_to_rle


def good() -> dict:
    mask = np.zeros((20, 30), bool)
    mask[2:10, 5:25] = True
    return {
        "info": {"year": 2026},
        "images": [{"id": 1, "file_name": "a.jpg", "width": 30, "height": 20, "license": 3}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [5, 2, 20, 8], "segmentation": mask_to_rle(mask)},
            {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0, 0, 4, 4],
             "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]], "iscrowd": 0, "area": 16.0},
            {"id": 3, "image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1],
             "segmentation": {"size": [20, 30], "counts": [0, 1, 599]}, "iscrowd": 1},
        ],
        "categories": [{"id": 5, "name": "cat", "supercategory": "animal"}],
    }


def test_good_file_passes_and_is_completed():
    data = validate_ground_truth(good(), "gt.json")
    assert data["annotations"][0]["area"] == 160.0 and data["annotations"][0]["iscrowd"] == 0
    assert data["annotations"][1]["area"] == 16.0
    assert data["images"][0]["license"] == 3 and data["info"] == {"year": 2026}  # extras kept


def _edit(path: str, value):
    data = good()
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is KeyError:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return data


CASES = [
    ("annotations.0.bbox", [1, 2, 3], r"annotations\[0\]\.bbox: expected 4 numbers \[x, y, width, height\], got 3"),
    ("annotations.0.bbox", "1,2,3,4", r"annotations\[0\]\.bbox: .*\(got '1,2,3,4'\)"),
    ("annotations.0.bbox", [1, 2, "3", 4], r"annotations\[0\]\.bbox\[2\]: Input should be a valid number"),
    ("annotations.0.bbox", [1, 2, -3, 4], r"annotations\[0\]\.bbox: width and height must be >= 0"),
    ("annotations.0.bbox", [1, 2, True, 4], r"annotations\[0\]\.bbox\[2\]"),
    ("annotations.0.bbox", KeyError, r"annotations\[0\]\.bbox: Field required"),
    ("images", {"id": 1}, r"images: Input should be a valid list"),
    ("images.0", [1, "a.jpg"], r"images\[0\]: Input should be a valid dictionary"),
    ("images.0.width", 0, r"images\[0\]\.width: Input should be greater than 0"),
    ("images.0.id", "1", r"images\[0\]\.id: Input should be a valid integer"),
    ("categories", [], r"categories: List should have at least 1 item"),
    ("categories.0", "cat", r"categories\[0\]: Input should be a valid dictionary"),
    ("categories.0.name", None, r"categories\[0\]\.name: Input should be a valid string"),
    ("annotations.1.segmentation", [[0, 0, 4, 0]], r"annotations\[1\]\.segmentation\[0\]: List should have at least 6"),
    ("annotations.1.segmentation", [[0, 0, 4, 0, 4, 4, 1]], r"annotations\[1\]\.segmentation"),
    ("annotations.1.segmentation", [], r"annotations\[1\]\.segmentation"),
    ("annotations.1.segmentation", [["a", 0, 4, 0, 4, 4]], r"annotations\[1\]\.segmentation"),
    ("annotations.0.segmentation.counts", "!!!!", r"annotations\[0\]\.segmentation\.counts: not a valid compressed RLE"),
    ("annotations.0.segmentation.counts", "0", r"annotations\[0\]\.segmentation\.counts: the runs cover 0 pixels, the image has 600"),
    ("annotations.0.segmentation.counts", "a", r"ends in the middle of a run"),
    ("annotations.0.segmentation.size", [10, 30], r"annotations\[0\]\.segmentation\.size: \[10, 30\] but image 1 is \[20, 30\]"),
    ("annotations.2.segmentation.counts", [0, 1, 5], r"annotations\[2\]\.segmentation\.counts: the runs cover 6 pixels"),
    ("annotations.2.segmentation.counts", [0, -1, 601],
     r"annotations\[2\]\.segmentation\.counts\[1\]: Input should be greater than or equal to 0"),
    ("annotations.0.image_id", 99, r"annotations\[0\]\.image_id: 99 is no image id of the file"),
    ("annotations.0.category_id", 7, r"annotations\[0\]\.category_id: 7 is no category id of the file"),
    ("annotations.1.id", 1, r"annotations\[1\]\.id: 1 is used twice in `annotations`"),
    ("annotations.0.iscrowd", 2, r"annotations\[0\]\.iscrowd"),
    ("annotations.0.area", -1, r"annotations\[0\]\.area"),
    ("annotations.1.segmentation", [[0, 0, 4, 0, 4, 1e12]], r"annotations\[1\]\.segmentation\[0\]: points far outside image 1"),
    ("images.0.width", 10**9, r"images\[0\]: 1000000000x20 is more than the limit of \d+ pixels"),
    ("images.0.file_name", "a\x00.jpg", r"images\[0\]\.file_name: a file name cannot contain a NUL"),
]


@pytest.mark.parametrize("path,value,expected", CASES, ids=[f"{p}={v!r}"[:40] for p, v, _ in CASES])
def test_malformed_ground_truth_is_one_line(path, value, expected):
    with pytest.raises(InputError, match=expected) as info:
        validate_ground_truth(_edit(path, value), "gt.json")
    assert str(info.value).startswith("gt.json: ") and "\n" not in str(info.value)


def test_the_rle_reader_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((13, 17)) > rng.random()
        rle = mask_to_rle(mask)
        runs = rle_string_counts(rle["counts"])
        assert sum(runs) == 13 * 17
        flat = np.concatenate([np.full(n, i % 2, bool) for i, n in enumerate(runs)])
        assert np.array_equal(flat.reshape(17, 13).T, mask)  # column-major, as COCO


@pytest.mark.parametrize("content,expected", [
    (b"[1, 2]", "a COCO file is a JSON object"),
    (b'{"images": []}', r"missing: annotations, categories"),
    (b"\xff\xfe{}", "not a UTF-8 JSON file"),
    (b'{"images": [', "not a JSON file"),
    (b'{"images": NaN}', "NaN is not a number COCO allows"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not a JSON file"),
])
def test_bad_files(tmp_path, content, expected):
    path = tmp_path / "gt.json"
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        read_ground_truth(path)


def test_load_ground_truth_indexes_the_checked_file(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(good()))
    coco = load_ground_truth(path)
    assert sorted(coco.anns) == [1, 2, 3] and coco.cats[5]["name"] == "cat"
