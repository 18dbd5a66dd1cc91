"""Plugins are found through the `recognize` entry-point group, exactly as a third party publishes them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recognize import plugins

REPO = Path(__file__).resolve().parents[1]


def test_builtins_register_through_the_hooks():
    names = {info.name for info in plugins.plugin_infos()}
    assert "recognize.outputs.builtin" in names
    registry = plugins.stages()
    assert {"json", "annotated_image", "coco", "yolo"} <= set(registry)


def test_unknown_stage_names_the_choices():
    from recognize.errors import RecognizeError

    with pytest.raises(RecognizeError, match="available: .*json"):
        plugins.get_stage("nope")


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """pip-install examples/recognize-color-tags into a private target folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(REPO / "examples" / "recognize-color-tags")],
        check=True, capture_output=True, timeout=300,
    )
    return target


def run_cli(site, *args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    env.pop("RECOGNIZE_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "recognize", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_example_plugin_is_discovered_and_usable(installed_example, tmp_path):
    listed = run_cli(installed_example, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    infos = {i["name"]: i for i in json.loads(listed.stdout)}
    assert infos["recognize-color-tags"]["version"] == "0.1.0"
    assert infos["recognize-color-tags"]["stages"] == ["color_tags"]

    from PIL import Image

    Image.new("RGB", (20, 20), (250, 10, 10)).save(tmp_path / "red.png")
    recipe = tmp_path / "colors.yaml"
    recipe.write_text("recipe: 1\nstages:\n  - use: color_tags\n    with: {min_fraction: 0.5}\n")
    result = run_cli(installed_example, "run", recipe, tmp_path / "red.png", "-o", tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr
    frame = json.loads((tmp_path / "out" / "frames" / "red.png.json").read_text())
    assert [(t["name"], t["source"]) for t in frame["tags"]] == [("red", "color_tags")]
