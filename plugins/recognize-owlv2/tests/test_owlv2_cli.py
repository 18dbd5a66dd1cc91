"""tag -> box through the CLI with OWLv2 as the localizer (the RAM fixture, a tiny random OWLv2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from owl_support import REFERENCE, TINY


@pytest.mark.slow
@pytest.mark.subprocess
def test_tag_then_owlv2_cli(tmp_path):
    ram = REFERENCE / "fixtures" / "ram"
    photo = REFERENCE / "data" / "images" / "demo" / "demo4.jpg"
    if not (ram / "checkpoint.pth").is_file() or not photo.is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    recipe = tmp_path / "owl.yaml"
    recipe.write_text(json.dumps({  # JSON is YAML
        "recipe": 1,
        "settings": {"batch_size": 1, "device": "cpu"},
        "stages": [
            {"use": "ram", "with": {"config": str(ram / "config.json"), "checkpoint": str(ram / "checkpoint.pth")}},
            {"use": "owlv2", "with": {**TINY, "box_threshold": 0.3}},
        ],
        "outputs": [{"use": "yolo"}],
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
        assert region.tag in zh and region.tag_zh == zh[region.tag] and region.source == "owlv2"

    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: 1\nstages:\n  - use: owlv2\n    with: {model: huge}\n")
    result = subprocess.run([sys.executable, "-m", "recognize", "run", str(bad), str(photo), "-o", str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "stages[0].with.model" in result.stderr
