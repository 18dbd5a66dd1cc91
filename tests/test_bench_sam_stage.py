"""`benchmarks/bench_sam_stage.py --quick` times the SAM stage part by part, two ways, and reports sane
numbers (speed itself is never asserted: the vit_h run is recorded in `benchmarks/README.md`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "reference" / "data" / "images" / "1641173_2291260800.jpg"


def test_quick_run_times_every_part_of_both_ways():
    if not PHOTO.exists():
        pytest.skip(f"reference photo not found at {PHOTO}")
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_sam_stage.py"), "--quick", "--repeats", "1"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["model"] == "tiny" and result["gflop_encoder"] > 0 and result["gflop_decoder"] > 0
    assert result["onednn_gflops_wall"] > 0 and result["onednn_gflops_cpu_per_thread"] > 0
    # the two ways decode alike but at the threshold (pixels of 2 boxes x 13.8 MP)
    assert result["masks_differing_pixels"] <= 10
    for way in ("before", "after"):
        parts = result["ways"][way]["parts"]
        for name in ("resize", "normalise + pad", "patch embedding", "windowed blocks", "global blocks", "neck",
                     "encoder", "postprocess (upsample)", "decode + postprocess", "stage"):
            assert parts[name]["wall_s"] > 0 and parts[name]["cpu_per_thread_s"] >= 0, name
        blocks = sum(parts[n]["wall_s"] for n in ("patch embedding", "windowed blocks", "global blocks", "neck"))
        assert blocks <= parts["encoder"]["wall_s"] * 1.01
        for share in ("encoder_share_of_onednn", "stage_share_of_onednn"):
            assert 0 < result["ways"][way][share]["wall"] and 0 < result["ways"][way][share]["cpu"]
