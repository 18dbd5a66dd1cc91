"""tag -> box through the CLI with OWLv2 as the localizer (the RAM fixture, a tiny random OWLv2)."""

from __future__ import annotations

import pytest
from owl_support import REFERENCE, TINY

from recognize.testing import run_recipe


@pytest.mark.slow
@pytest.mark.subprocess
def test_tag_then_owlv2_cli(tmp_path):
    ram = REFERENCE / "fixtures" / "ram"
    photo = REFERENCE / "data" / "images" / "demo" / "demo4.jpg"
    if not (ram / "checkpoint.pth").is_file() or not photo.is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    run = run_recipe({
        "recipe": 1,
        "settings": {"batch_size": 1, "device": "cpu"},
        "stages": [
            {"use": "ram", "with": {"config": str(ram / "config.json"), "checkpoint": str(ram / "checkpoint.pth")}},
            {"use": "owlv2", "with": {**TINY, "box_threshold": 0.3}},
        ],
        "outputs": [{"use": "yolo"}],
    }, [photo], tmp_path / "out")
    assert run.returncode == 0, run.stderr
    out = run.out_dir

    frame = run.frame("demo4.jpg")
    assert frame.tags and frame.regions
    zh = {t.name: t.name_zh for t in frame.tags}
    for region in frame.regions:
        assert region.tag in zh and region.tag_zh == zh[region.tag] and region.source == "owlv2"

    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: 1\nstages:\n  - use: owlv2\n    with: {model: huge}\n")
    result = run_recipe(bad, [photo], out, args=(), timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "stages[0].with.model" in result.stderr
