"""tag -> box -> mask end to end through the CLI, with tiny random models of the real classes:
the RAM fixture (official format), a tiny Grounding DINO and a tiny SAM."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("recognize_grounding_dino")
pytest.importorskip("recognize_sam")
sys.path.insert(0, str(REPO / "plugins" / "recognize-grounding-dino" / "tests"))


@pytest.fixture(scope="module")
def tiny_grounding_dino(tmp_path_factory):
    from gd_support import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("gd"))


@pytest.mark.slow
def test_tag_ground_segment_cli(tmp_path, reference, tiny_grounding_dino):
    ram = reference / "fixtures" / "ram"
    photos = reference / "data" / "images" / "demo"
    recipe = tmp_path / "tgs.yaml"
    recipe.write_text(json.dumps({  # JSON is YAML
        "recipe": 1,
        "settings": {"batch_size": 2, "device": "cpu"},
        "stages": [
            {"use": "ram", "with": {"config": str(ram / "config.json"), "checkpoint": str(ram / "checkpoint.pth")}},
            {"use": "grounding_dino", "with": {**tiny_grounding_dino, "box_threshold": 0.0, "text_threshold": 0.0,
                                               "image_size": 224, "max_size": 320}},
            {"use": "sam", "with": {"config": {"encoder_embed_dim": 32, "encoder_depth": 1, "encoder_num_heads": 2,
                                               "encoder_global_attn_indexes": [0]}, "weights": "random"}},
        ],
        "outputs": [{"use": "annotated_image"}, {"use": "coco"}],
    }))
    out = tmp_path / "out"
    env = dict(os.environ, RECOGNIZE_HOME=str(tmp_path / "home"), RECOGNIZE_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "recognize", "run", str(recipe), str(photos / "demo2.jpg"),
                             str(photos / "demo4.jpg"), "-o", str(out), "-q"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr

    from recognize import Frame

    total = 0
    for name in ("demo2", "demo4"):
        frame = Frame.from_json((out / "frames" / f"{name}.jpg.json").read_text())
        assert frame.tags and frame.regions
        names = {t.name for t in frame.tags}
        zh = {t.name: t.name_zh for t in frame.tags}
        for region in frame.regions:
            assert region.tag in names and region.tag_zh == zh[region.tag]
            x0, y0, x1, y1 = region.box
            assert 0 <= x0 <= x1 <= frame.width and 0 <= y0 <= y1 <= frame.height
            assert region.mask is not None and region.mask.shape == (frame.height, frame.width)
        raw = json.loads((out / "frames" / f"{name}.jpg.json").read_text())
        from recognize.frame import rle_to_mask

        for region, stored in zip(frame.regions, raw["regions"]):
            assert (rle_to_mask(stored["mask"]) == region.mask).all()
        assert (out / "frames" / f"{name}.jpg.annotated.jpg").is_file()
        total += len(frame.regions)
    assert len(json.loads((out / "coco.json").read_text())["annotations"]) == total
