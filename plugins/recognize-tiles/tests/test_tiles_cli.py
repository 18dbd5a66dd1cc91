"""A tiled recipe through the CLI: RAM tags, then OWLv2 (tiny, random) on slices of the photo."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from recognize.testing import run_recipe

PLUGINS = Path(__file__).resolve().parents[2]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", PLUGINS.parent.parent / "shared" / "reference"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_tiled_recipe_cli(tmp_path):
    pytest.importorskip("recognize_owlv2")
    sys.path.insert(0, str(PLUGINS / "recognize-owlv2" / "tests"))
    from owl_support import TINY

    ram = REFERENCE / "fixtures" / "ram"
    photo = REFERENCE / "data" / "images" / "demo" / "demo4.jpg"  # 428 x 640: 2 x 2 slices of 300
    if not (ram / "checkpoint.pth").is_file() or not photo.is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    run = run_recipe({
        "recipe": 1,
        "settings": {"batch_size": 1, "device": "cpu"},
        "stages": [
            {"use": "ram", "with": {"config": str(ram / "config.json"), "checkpoint": str(ram / "checkpoint.pth")}},
            {"use": "tiled", "with": {"tile": 300, "overlap": 60, "batch_size": 4,
                                      "localizer": {"use": "owlv2", "with": {**TINY, "box_threshold": 0.3}}}},
        ],
        "outputs": [{"use": "coco"}],
    }, [photo], tmp_path / "out")
    assert run.returncode == 0, run.stderr
    out = run.out_dir

    frame = run.frame("demo4.jpg")
    assert frame.tags and frame.regions
    zh = {t.name: t.name_zh for t in frame.tags}
    for region in frame.regions:
        assert region.tag_zh == zh[region.tag] and region.source == "owlv2"
        x0, y0, x1, y1 = region.box
        assert 0 <= x0 < x1 <= frame.width and 0 <= y0 < y1 <= frame.height

    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: 1\nstages:\n  - use: tiled\n    with:\n      localizer: {use: owlv2, with: {box_treshold: 1}}\n")
    result = run_recipe(bad, [photo], out, args=(), timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "stages[0].with.localizer" in result.stderr and "did you mean 'box_threshold'" in result.stderr
