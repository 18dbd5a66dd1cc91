"""User errors through the real CLI in a subprocess: one line on stderr, never a traceback, the
documented exit code (2 bad input/recipe/setting, 3 weights), and nothing written for a bad recipe."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from clihelp import cli_env
from PIL import Image

pytestmark = pytest.mark.subprocess

RECIPE = "recipe: 1\nstages:\n  - use: brightness\noutputs:\n  - use: json\n"


def recognize(*args, **env):
    return subprocess.run([sys.executable, "-m", "recognize", *map(str, args)], check=False, capture_output=True, text=True,
                          env=cli_env(**env), timeout=120)


def one_line_error(result, code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (16, 12), (200, 30, 30)).save(folder / "a.png")
    return folder


def test_bad_max_pixels_setting(tmp_path, images):
    (tmp_path / "r.yaml").write_text(RECIPE)
    result = recognize("run", tmp_path / "r.yaml", images, "-o", tmp_path / "out", RECOGNIZE_MAX_PIXELS="abc")
    assert "RECOGNIZE_MAX_PIXELS='abc': expected a positive whole number" in one_line_error(result, 2)


def test_bad_prefetch_workers_setting_writes_nothing(tmp_path, images):
    (tmp_path / "r.yaml").write_text(RECIPE)
    result = recognize("run", tmp_path / "r.yaml", images, "-o", tmp_path / "out", RECOGNIZE_PREFETCH_WORKERS="0")
    assert "RECOGNIZE_PREFETCH_WORKERS='0': give a whole number of threads" in one_line_error(result, 2)
    assert not (tmp_path / "out" / "a.json").exists()


def test_bad_ray_reservation_setting_is_one_line_before_ray_starts(tmp_path, images):
    pytest.importorskip("ray.data")
    (tmp_path / "r.yaml").write_text(RECIPE)
    result = recognize("run", tmp_path / "r.yaml", images, "-o", tmp_path / "out", "--engine", "ray",
                       RECOGNIZE_RAY_GPUS="a GPU")
    assert "RECOGNIZE_RAY_GPUS='a GPU': expected a number >= 0 (default 0)" in one_line_error(result, 2)
    assert not (tmp_path / "out").exists()


def test_recognize_home_on_a_file(tmp_path):
    blocker = tmp_path / "home"
    blocker.write_text("not a folder")
    result = recognize("models", "list", RECOGNIZE_HOME=str(blocker))
    assert "RECOGNIZE_HOME=" in one_line_error(result, 2) and "is a file" in result.stderr


@pytest.mark.parametrize("content,looks_like", [
    ("404: Not Found\n", "a text file"),
    ("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n", "a Git LFS pointer"),
    ("<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML page"),
])
def test_checkpoint_that_is_not_weights(tmp_path, images, content, looks_like):
    """SAM: a stage whose only model file is the checkpoint (the tagger would first ask for its tag
    lists, offline); every loader shares the reader, see tests/test_weights_file.py."""
    checkpoint = tmp_path / "sam_vit_b.pth"
    checkpoint.write_text(content)
    (tmp_path / "r.yaml").write_text(f"recipe: 1\nstages:\n  - use: sam\n    with: {{checkpoint: {checkpoint}}}\n")
    result = recognize("run", tmp_path / "r.yaml", images, "-o", tmp_path / "out",
                       RECOGNIZE_HOME=str(tmp_path / "cache"), RECOGNIZE_OFFLINE="1")
    line = one_line_error(result, 3)
    assert str(checkpoint) in line and looks_like in line
    assert "weights_only" not in result.stderr and "KeyError" not in result.stderr


def test_typo_inside_tagger_with_writes_nothing(tmp_path, images):
    (tmp_path / "r.yaml").write_text(
        "recipe: 1\nstages:\n  - use: brightness\n  - use: center_box\n  - use: box_mask\n"
        "  - use: region_confirm\n    with:\n      tagger: brightness\n      tagger_with: {treshold: 0.5}\n")
    out = tmp_path / "out"
    result = recognize("run", tmp_path / "r.yaml", images, "-o", out)
    assert "stages[3].with.tagger_with.treshold: unknown parameter" in one_line_error(result, 2)
    assert not out.exists()


def test_alias_bomb_recipe_is_refused_before_anything_is_written(tmp_path, images):
    laughs = "".join(f"  {n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "r.yaml").write_text(
        "recipe: 1\nstages:\n  - use: brightness\n    with:\n      lol:\n        a: &a [x,x,x,x,x,x,x,x,x]\n"
        + laughs.replace("  ", "        ", 1).replace("\n  ", "\n        ") + "outputs:\n  - use: json\n")
    out = tmp_path / "out"
    result = recognize("run", tmp_path / "r.yaml", images, "-o", out)
    assert "alias bomb" in one_line_error(result, 2)
    assert not out.exists()


def test_malformed_coco_ground_truth(tmp_path):
    from recognize.frame import Frame, Region

    predictions = tmp_path / "run"
    predictions.mkdir()
    (predictions / "a.json").write_text(Frame(source="a.jpg", width=20, height=20, regions=[
        Region(tag="cat", box=(0, 0, 10, 10), score=0.8)]).to_json())
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 10]}],
        "categories": [{"id": 3, "name": "cat"}],
    }))
    result = recognize("eval", "regions", "--predictions", predictions, "--annotations", gt, "-o", tmp_path / "e")
    assert "annotations[0].bbox: expected 4 numbers" in one_line_error(result, 2)
