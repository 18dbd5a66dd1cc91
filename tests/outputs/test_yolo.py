"""The `yolo` output: normalised boxes / polygons with one class list for the whole run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import supervision as sv
import yaml
from PIL import Image

from recognize.frame import Frame
from recognize.outputs.yolo import YoloOutput


def read_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_classes_from_the_whole_run_are_written_at_finish(tmp_path: Path, frame_factory) -> None:
    a, b = frame_factory("a"), frame_factory("sub/b", seed=1)
    b.regions = [r for r in b.regions if r.tag == "grass"]
    b.regions[0].tag = "lawn"  # a tag only the second image has
    stage = YoloOutput()
    for frame in (a, b):
        assert stage.files(frame, tmp_path) == []  # ids are unknown until every tag is seen
        stage.write(frame, tmp_path)
    assert not (tmp_path / "labels").exists()
    stage.finish([a, b], tmp_path)

    classes = ["ball", "dog", "grass", "lawn"]
    assert (tmp_path / "classes.txt").read_text().splitlines() == classes
    data = yaml.safe_load((tmp_path / "data.yaml").read_text())
    assert data == {"nc": 4, "names": dict(enumerate(classes))}

    lines_a = read_lines(tmp_path / "labels" / "a.txt")
    assert [line[0] for line in lines_a] == ["1", "0", "2"]
    assert all(len(line) > 5 and len(line) % 2 == 1 for line in lines_a[:2])  # masks -> polygons
    cx, cy, w, h = (float(v) for v in lines_a[2][1:])  # box-only region: cls cx cy w h, normalised
    assert (cx, cy, w, h) == pytest.approx((40 / 80, 54.5 / 60, 76 / 80, 9 / 60), abs=1e-5)
    polygon = np.array([float(v) for v in lines_a[0][1:]]).reshape(-1, 2) * [80, 60]
    assert polygon.min(axis=0) == pytest.approx([11, 16], abs=1.01)
    assert polygon.max(axis=0) == pytest.approx([38, 43], abs=1.01)
    assert read_lines(tmp_path / "labels" / "sub" / "b.txt") == [["3", *lines_a[2][1:]]]


def test_fixed_class_list_writes_per_image(tmp_path: Path, frame_factory) -> None:
    frame = frame_factory("a")
    stage = YoloOutput(classes=["dog", "person", "grass"], segments=False)
    (label,) = stage.files(frame, tmp_path)
    assert label == tmp_path / "labels" / "a.txt"
    stage.write(frame, tmp_path)
    lines = read_lines(label)
    assert [line[0] for line in lines] == ["0", "2"]  # ball is not in the list: left out
    assert all(len(line) == 5 for line in lines)  # segments off: boxes only
    assert [float(v) for v in lines[0][1:]] == pytest.approx([25 / 80, 30 / 60, 28 / 80, 28 / 60], abs=1e-5)

    empty = Frame(source="/x/e.jpg", name="e", width=8, height=8)
    stage.write(empty, tmp_path)
    assert (tmp_path / "labels" / "e.txt").read_text() == ""  # background image
    stage.finish([frame, empty], tmp_path)
    assert (tmp_path / "classes.txt").read_text().splitlines() == ["dog", "person", "grass"]


def test_class_list_is_validated() -> None:
    with pytest.raises(ValueError, match="repeated: dog"):
        YoloOutput(classes=["dog", "cat", "dog"])
    with pytest.raises(ValueError, match="at least one"):
        YoloOutput(classes=[])


def test_dataset_loads_back_with_supervision(tmp_path: Path, frame_factory) -> None:
    frames = [frame_factory(n, seed=i) for i, n in enumerate(("a", "b"))]
    for frame in frames:
        frame.source = str(tmp_path / "src" / f"{frame.name}.png")
        Path(frame.source).parent.mkdir(exist_ok=True)
        Image.fromarray(frame.image).save(frame.source)
    stage = YoloOutput(copy_images=True)
    assert stage.files(frames[0], tmp_path) == [tmp_path / "images" / "a.png"]
    for frame in frames:
        stage.write(frame, tmp_path)
    stage.finish(frames, tmp_path)
    assert yaml.safe_load((tmp_path / "data.yaml").read_text())["train"] == "images"

    dataset = sv.DetectionDataset.from_yolo(
        images_directory_path=str(tmp_path / "images"),
        annotations_directory_path=str(tmp_path / "labels"),
        data_yaml_path=str(tmp_path / "data.yaml"),
        force_masks=True,
    )
    assert dataset.classes == ["ball", "dog", "grass"]
    index = [Path(p).name for p in dataset.image_paths].index("a.png")
    _, _, detections = dataset[index]
    names = [dataset.classes[i] for i in detections.class_id]
    assert names == ["dog", "ball", "grass"]
    dog = detections.mask[0]
    expected = frames[0].regions[0].mask
    iou = (dog & expected).sum() / (dog | expected).sum()
    assert iou > 0.85  # polygon approximation of the disc, rasterised back
