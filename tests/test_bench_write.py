"""`benchmarks/bench_write.py`: one image's writing, part by part, against a git revision's code."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))


#: the last revision that drew on a Pillow image, converted around each annotator and copied masks with NumPy
BEFORE = "0adb572"


def test_one_round_against_the_drawing_before_gives_the_same_outputs_and_the_parts(tmp_path):
    photo = REFERENCE / "data" / "images" / "demo" / "demo4.jpg"
    if not photo.is_file():
        pytest.skip(f"reference photos not found under {REFERENCE}")
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{BEFORE}^{{commit}}"],
                      capture_output=True, check=False).returncode:
        pytest.skip(f"revision {BEFORE} not in this checkout (a shallow clone?)")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_write.py"), "--rounds", "1", "--masks", "2",
                           "--photo", str(photo), "--baseline", BEFORE],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the file's bytes are reported, not asserted: they hold while Pillow's and OpenCV's libjpeg-turbo builds agree
    # (tests/outputs/test_annotated_image.py checks the JPEG's tables and pixels instead)
    assert f"same picture as {BEFORE}: True; same file bytes: " in proc.stdout
    assert "; same RLE masks: True" in proc.stdout
    for part in ("annotated_image total", "MaskAnnotator", "json: masks to RLE"):
        assert f"| {part} |" in proc.stdout, part
