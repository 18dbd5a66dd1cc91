"""tag -> box -> mask through the CLI with SAM 2 as the segmenter (tiny random models of the real
classes: the RAM fixture in the official format, a tiny Grounding DINO, a tiny SAM 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sam2_support import REFERENCE, TINY_CONFIG

from recognize.testing import run_recipe

PLUGINS = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_grounding_dino(tmp_path_factory):
    pytest.importorskip("recognize_grounding_dino")
    sys.path.insert(0, str(PLUGINS / "recognize-grounding-dino" / "tests"))
    from gd_support import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("gd"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_tag_ground_segment_sam2_cli(tmp_path, tiny_grounding_dino):
    ram = REFERENCE / "fixtures" / "ram"
    photo = REFERENCE / "data" / "images" / "demo" / "demo4.jpg"
    if not (ram / "checkpoint.pth").is_file() or not photo.is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    run = run_recipe({
        "recipe": 1,
        "settings": {"batch_size": 1, "device": "cpu"},
        "stages": [
            {"use": "ram", "with": {"config": str(ram / "config.json"), "checkpoint": str(ram / "checkpoint.pth")}},
            {"use": "grounding_dino", "with": {**tiny_grounding_dino, "box_threshold": 0.0, "text_threshold": 0.0,
                                               "image_size": 128, "max_size": 192}},
            {"use": "sam2", "with": {"config": TINY_CONFIG, "weights": "random"}},
        ],
        "outputs": [{"use": "coco"}],
    }, [photo], tmp_path / "out")
    assert run.returncode == 0, run.stderr
    out = run.out_dir

    frame = run.frame("demo4.jpg")
    assert frame.tags and frame.regions
    zh = {t.name: t.name_zh for t in frame.tags}
    for region in frame.regions:
        assert region.tag in zh and region.tag_zh == zh[region.tag]
        assert region.mask is not None and region.mask.shape == (frame.height, frame.width)
        assert region.mask_score is not None
    assert len(json.loads((out / "coco.json").read_text())["annotations"]) == len(frame.regions)
