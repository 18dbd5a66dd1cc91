"""`benchmarks/bench_write.py`: one image's writing, part by part, against a git revision's code."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))


def test_one_round_against_this_revision_gives_the_same_picture_and_the_parts(tmp_path):
    photo = REFERENCE / "data" / "images" / "demo" / "demo4.jpg"
    if not photo.is_file():
        pytest.skip(f"reference photos not found under {REFERENCE}")
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, check=False).returncode:
        pytest.skip("not a git checkout")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_write.py"), "--rounds", "1", "--masks", "2",
                           "--photo", str(photo), "--baseline", "HEAD"],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same picture as HEAD: True; same file bytes: True" in proc.stdout
    for part in ("annotated_image total", "MaskAnnotator", "json: masks to RLE"):
        assert f"| {part} |" in proc.stdout, part
