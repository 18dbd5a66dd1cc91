"""`benchmarks/bench_gemm_choice.py`: the exact paths' forwards with oneDNN's GEMM and with torch's, alternating
in one process. Its quick mode on tiny models: both paths run and give the same boxes, scores and masks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))


def test_both_gemms_run_and_agree(tmp_path):
    if not (REFERENCE / "data" / "images").is_dir():
        pytest.skip(f"reference images not found under {REFERENCE}")
    env = {**os.environ, "RECOGNIZE_BENCH_CACHE": str(tmp_path / "cache"), "RECOGNIZE_REFERENCE": str(REFERENCE)}
    out = tmp_path / "gemm.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gemm_choice.py"), "--quick",
                           "--stages", "grounding_dino,sam", "--rounds", "2", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| grounding_dino | 2 |" in proc.stdout and "| sam | 2 |" in proc.stdout
    report = json.loads(out.read_text())
    assert [row["stage"] for row in report["stages"]] == ["grounding_dino", "sam"]
    for row in report["stages"]:
        assert len(row["onednn_s"]) == len(row["torch_s"]) == 2 and row["ratio_median"] > 0, row
        assert row["outputs_same_size"], row
        assert row["max_output_difference"] is not None and row["max_output_difference"] < 1e-3, row
        assert row["max_mask_pixels_differing"] < 1e-3, row
    assert len(report["probes"]) == 2 and report["probes"][0]["fp32"] > 0
    from recognize import onednn_linear

    if onednn_linear.available():  # then the flag switched paths: another summation order, other last bits
        assert any(row["max_output_difference"] > 0 for row in report["stages"]), report["stages"]
