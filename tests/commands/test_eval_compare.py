"""`recognize eval compare` through a subprocess, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from clihelp import cli_env

RECIPE = """\
recipe: 1
stages:
  - use: brightness
  - use: grid_boxes
    with: {count: 3}
  - use: box_mask
"""


def recognize(*args):
    env = cli_env(RECOGNIZE_PLUGINS="teststages,speedstages")
    return subprocess.run([sys.executable, "-m", "recognize", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.subprocess
def test_compare_two_recipes_then_their_run_folders(image_folder, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "cmp"
    result = recognize("eval", "compare", recipe, recipe, image_folder, "-o", out, "-q",
                       "--set-b", "stages.1.with.max_regions=2", "--set-b", "stages.1.with.score_offset=0.05")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "compare.json").read_text())
    overall = report["overall"]
    images = report["overall"]["images"]
    assert images == 3
    # B keeps the 2 best of A's 3 boxes per image, unmoved: paired exactly, one unpaired in A per image
    assert (overall["regions_a"], overall["regions_b"], overall["matched"]) == (9, 6, 6)
    assert (overall["unmatched_a"], overall["unmatched_b"]) == (3, 0)
    assert overall["mean_box_iou"] == pytest.approx(1.0) and overall["mean_mask_iou"] == pytest.approx(1.0)
    assert overall["max_region_score_diff"] == pytest.approx(0.05)
    assert overall["tag_jaccard"] == 1.0 and overall["max_tag_score_diff"] == 0.0
    assert report["b"]["fast_modes"] == {"grid_boxes": {"max_regions": 2}} and report["a"]["fast_modes"] == {}
    assert report["a"]["stage_seconds_per_image"] is not None
    assert "overall" in result.stdout and "9/6" in result.stdout and "fast modes: grid_boxes max_regions=2" in result.stdout
    assert "fast modes on" in result.stderr  # B's run said so itself

    # the same comparison from the two run folders, no images needed; boxes moved by 1 px in a third run
    again = recognize("eval", "compare", out / "a", out / "b", "-o", tmp_path / "again", "-q")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "compare.json").read_text())["overall"] == overall
    moved = recognize("eval", "compare", recipe, recipe, image_folder, "-o", tmp_path / "moved", "-q",
                      "--set-b", "stages.1.with.shift=1")
    assert moved.returncode == 0, moved.stderr
    moved_overall = json.loads((tmp_path / "moved" / "compare.json").read_text())["overall"]
    assert moved_overall["matched"] == 9 and 0.5 < moved_overall["mean_box_iou"] < 1.0
    assert moved_overall["mean_mask_iou"] < 1.0


@pytest.mark.subprocess
def test_compare_errors_are_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    no_images = recognize("eval", "compare", recipe, recipe, "-o", tmp_path / "x")
    assert no_images.returncode == 2 and "needs IMAGES" in no_images.stderr and "Traceback" not in no_images.stderr
    (tmp_path / "plain").mkdir()
    not_a_run = recognize("eval", "compare", tmp_path / "plain", recipe, tmp_path, "-o", tmp_path / "y")
    assert not_a_run.returncode == 2 and "without summary.json" in not_a_run.stderr


@pytest.mark.subprocess
def test_compare_reads_parquet_and_jsonl_shards_of_run_folders(image_folder, tmp_path):
    for fmt in ("parquet", "jsonl"):
        recipe = tmp_path / f"{fmt}.yaml"
        recipe.write_text(RECIPE + f"outputs:\n  - use: shards\n    with: {{format: {fmt}}}\n")
        run = recognize("run", recipe, image_folder, "-o", tmp_path / fmt, "-q")
        assert run.returncode == 0, run.stderr
        assert not (tmp_path / fmt / "frames").exists() and list((tmp_path / fmt / "shards").glob(f"*.{fmt}"))
    result = recognize("eval", "compare", tmp_path / "parquet", tmp_path / "jsonl", "-o", tmp_path / "cmp", "-q")
    assert result.returncode == 0, result.stderr
    overall = json.loads((tmp_path / "cmp" / "compare.json").read_text())["overall"]
    assert (overall["images"], overall["regions_a"], overall["matched"]) == (3, 9, 9)
    assert overall["mean_box_iou"] == pytest.approx(1.0) and overall["mean_mask_iou"] == pytest.approx(1.0)
