"""A tiled recipe through the CLI: RAM tags, then OWLv2 (tiny, random) on slices of the photo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    recipe = tmp_path / "tiled.yaml"
    recipe.write_text(json.dumps({  # JSON is YAML
        "recipe": 1,
        "settings": {"batch_size": 1, "device": "cpu"},
        "stages": [
            {"use": "ram", "with": {"config": str(ram / "config.json"), "checkpoint": str(ram / "checkpoint.pth")}},
            {"use": "tiled", "with": {"tile": 300, "overlap": 60, "batch_size": 4,
                                      "localizer": {"use": "owlv2", "with": {**TINY, "box_threshold": 0.3}}}},
        ],
        "outputs": [{"use": "coco"}],
    }))
    out = tmp_path / "out"
    env = dict(os.environ, RECOGNIZE_HOME=str(tmp_path / "home"), RECOGNIZE_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "recognize", "run", str(recipe), str(photo), "-o", str(out), "-q"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr

    from recognize import Frame

    frame = Frame.from_json((out / "frames" / "demo4.jpg.json").read_text())
    assert frame.tags and frame.regions
    zh = {t.name: t.name_zh for t in frame.tags}
    for region in frame.regions:
        assert region.tag_zh == zh[region.tag] and region.source == "owlv2"
        x0, y0, x1, y1 = region.box
        assert 0 <= x0 < x1 <= frame.width and 0 <= y0 < y1 <= frame.height

    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: 1\nstages:\n  - use: tiled\n    with:\n      localizer: {use: owlv2, with: {box_treshold: 1}}\n")
    result = subprocess.run([sys.executable, "-m", "recognize", "run", str(bad), str(photo), "-o", str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "stages[0].with.localizer" in result.stderr and "did you mean 'box_threshold'" in result.stderr
