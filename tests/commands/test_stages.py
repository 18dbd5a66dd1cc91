"""`recognize stages [NAME]` through the real CLI: every parameter in plain words."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from clihelp import cli_env

pytestmark = pytest.mark.subprocess


def stages(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recognize", "stages", *args], capture_output=True, text=True,
                          env=cli_env(), timeout=600, check=False)


@pytest.mark.parametrize("name", ["grounding_dino", "tag2text_caption", "sam", "region_outliers", "brightness"])
def test_every_parameter_in_plain_words(name):
    result = stages(name)
    assert result.returncode == 0, result.stderr
    for python_talk in ("PydanticUndefined", "Literal", "Optional", "typing.", "NoneType", "<class"):
        assert python_talk not in result.stdout, (python_talk, result.stdout)
    from recognize import plugins

    with plugins.registered(__import__("teststages"), name="teststages"):
        fields = plugins.get_stage(name).Params.model_fields
    lines = result.stdout.splitlines()[2:]
    assert fields and [line.split(":")[0].strip() for line in lines] == list(fields)


def test_types_allowed_values_and_defaults():
    out = stages("grounding_dino").stdout
    assert "  nms: one of 'per_tag', 'cross_tag', 'none'; default: 'per_tag'\n" in out
    assert "  box_threshold: number (>= 0.0, <= 1.0); default: 0.35\n" in out
    assert "  checkpoint: text or none; default: none. local checkpoint" in out
    assert "  max_size: integer or none (>= 32, <= 8192); default: 1333." in out
    ram = stages("ram").stdout
    assert "  threshold: number (>= 0.0, <= 1.0) or none; default: none." in ram
    assert "  exclude: list of text; default: []." in ram
    assert "  thresholds: mapping of text to number (>= 0.0, <= 1.0); default: {}." in ram


def test_json_gives_types_defaults_and_schema():
    data = json.loads(stages("sam", "--json").stdout)
    assert data["kind"] == "segmenter" and data["params"]["model"] == {
        "type": "one of 'vit_h', 'vit_l', 'vit_b'", "required": False, "default": "vit_h",
        "description": "official SAM variant; vit_b is the light one (~1/7 of vit_h's encoder FLOPs), for CPUs"}
    assert data["params"]["config"]["default"] is None and "properties" in data["schema"]


def test_a_qualified_name_and_an_unknown_one():
    assert stages("recognize:ram").stdout.startswith("recognize:ram (tagger, image scope)")
    assert stages("recognize-sam:sam").returncode == 0
    unknown = stages("nope")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown stage 'nope'; available:")
