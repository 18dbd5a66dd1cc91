"""recognize.fast_modes: what counts as a fast mode, the region cap, and how a run reports modes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recognize.fast_modes import REASON_MAX_REGIONS, active_fast_modes, cap_regions, describe_fast_modes
from recognize.frame import Frame, Region
from recognize.taggers.ram_stages import RamPlus


def _frame(scores) -> Frame:
    return Frame(source="x.jpg", regions=[Region(box=(i, i, i + 1, i + 1), score=s, tag=f"t{i}")
                                          for i, s in enumerate(scores)])


def test_cap_regions_keeps_the_best_in_their_order_and_records_the_rest():
    frame = _frame([0.2, 0.9, None, 0.5, 0.9])
    assert cap_regions(frame, 3, "sam") == 2
    assert [r.score for r in frame.regions] == [0.9, 0.5, 0.9]  # ties: the earlier one first; order unchanged
    assert [(d.tag, d.value, d.reason, d.stage) for d in frame.dropped] == [
        ("t0", 0.2, REASON_MAX_REGIONS, "sam"), ("t2", None, REASON_MAX_REGIONS, "sam")]
    assert frame.dropped[0].box == (0, 0, 1, 1)


@pytest.mark.parametrize("limit", [None, 5, 9])
def test_cap_regions_leaves_small_frames_alone(limit):
    frame = _frame([0.1, 0.2, 0.3, 0.4, 0.5])
    assert cap_regions(frame, limit, "sam") == 0
    assert len(frame.regions) == 5 and not frame.dropped


def test_cap_zero_drops_every_region():
    frame = _frame([0.1, 0.2])
    assert cap_regions(frame, 0, "x") == 2 and frame.regions == []


def test_taggers_dtype_is_a_fast_mode():
    assert active_fast_modes(RamPlus()) == {}
    assert active_fast_modes(RamPlus(dtype="bfloat16")) == {"dtype": "bfloat16"}
    line = describe_fast_modes({"ram_plus": {"dtype": "bfloat16"}, "sam": {"quantize": "int8", "max_regions": 5}})
    assert line.endswith("ram_plus dtype=bfloat16; sam quantize=int8 max_regions=5")


RECIPE = """\
recipe: 1
stages:
  - use: brightness
  - use: grid_boxes
    with: {count: 3}
  - use: box_mask
"""


@pytest.mark.subprocess
def test_a_run_with_a_fast_mode_says_so(tmp_path):
    """The summary records the modes and stderr has the notice; an exact run has neither."""
    from clihelp import cli_env
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    env = cli_env()
    env["RECOGNIZE_PLUGINS"] = ",".join(filter(None, [env.get("RECOGNIZE_PLUGINS"), "speedstages"]))
    outs = {}
    for label, extra in (("exact", []), ("fast", ["--set", "stages.1.with.max_regions=1"])):
        out = tmp_path / label
        result = subprocess.run([sys.executable, "-m", "recognize", "run", str(recipe), str(image), "-o", str(out),
                                 "-q", *extra], capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        outs[label] = (result.stderr, json.loads((out / "summary.json").read_text()),
                       json.loads((out / "frames" / "in.png.json").read_text()))
    (exact_err, exact_summary, exact_frame), (fast_err, fast_summary, fast_frame) = outs["exact"], outs["fast"]
    assert exact_summary["fast_modes"] == {} and "fast modes" not in exact_err
    assert fast_summary["fast_modes"] == {"grid_boxes": {"max_regions": 1}}
    assert "fast modes on" in fast_err and "grid_boxes max_regions=1" in fast_err
    assert len(exact_frame["regions"]) == 3 and len(fast_frame["regions"]) == 1
    assert [d["reason"] for d in fast_frame["dropped"]] == [REASON_MAX_REGIONS] * 2
