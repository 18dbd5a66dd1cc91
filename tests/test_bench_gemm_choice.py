"""`benchmarks/bench_gemm_choice.py`: the exact paths' forwards with oneDNN's GEMM and with torch's, alternating
in one process. Its quick mode on tiny models: both paths run and give the same boxes, scores and masks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_gemm_choice


@pytest.mark.subprocess
@pytest.mark.slow
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
        assert len(row["onednn_s"]) == len(row["torch_s"]) == len(row["ratios"]) == 2, row
        assert row["ratios"] == pytest.approx([a / b for a, b in zip(row["onednn_s"], row["torch_s"])]), row
        assert row["ratio_median"] == pytest.approx(sum(row["ratios"]) / 2), row  # the median of two
        assert row["outputs_same_size"], row
        assert row["max_output_difference"] is not None and row["max_output_difference"] < 1e-3, row
        assert row["max_mask_pixels_differing"] < 1e-3, row
    assert len(report["probes"]) == 2 and report["probes"][0]["fp32"] > 0
    from recognize import onednn_linear

    if onednn_linear.available():  # then the flag switched paths: another summation order, other last bits
        assert any(row["max_output_difference"] > 0 for row in report["stages"]), report["stages"]


def test_at_least_one_round_is_asked_for(capsys):
    with pytest.raises(SystemExit) as stop:
        bench_gemm_choice.main(["--rounds", "0"])
    assert stop.value.code == 2 and "--rounds must be at least 1" in capsys.readouterr().err


def test_the_table_tells_nothing_kept_from_counts_that_differ():
    row = {"outputs_same_size": True, "max_output_difference": None, "max_mask_pixels_differing": 0.0}
    assert bench_gemm_choice._difference(row) == "none kept"
    assert bench_gemm_choice._difference({**row, "outputs_same_size": False}) == "counts differ"
    assert bench_gemm_choice._difference({**row, "max_output_difference": 3e-6}) == "3.0e-06"
    assert bench_gemm_choice._pixels({**row, "max_mask_pixels_differing": None}) == "–"


def test_the_flag_is_put_back_when_a_forward_fails(tmp_path, monkeypatch):
    if not (REFERENCE / "data" / "images").is_dir():
        pytest.skip(f"reference images not found under {REFERENCE}")
    from bench_models import Kit

    from recognize import onednn_linear

    chosen = onednn_linear.ONEDNN
    calls = []

    def forward(stage, name, image, boxes, onednn):
        calls.append(onednn)
        onednn_linear.ONEDNN = onednn
        if len(calls) == 2:  # the torch path's warm-up
            raise RuntimeError("a forward failed")
        return 0.1, (np.zeros(1), [])

    monkeypatch.setattr(bench_gemm_choice, "_forward", forward)
    with pytest.raises(RuntimeError, match="a forward failed"):
        bench_gemm_choice.measure(Kit(quick=True, cache=tmp_path), "ram", np.zeros((32, 32, 3), np.uint8), rounds=1)
    assert calls == [True, False] and onednn_linear.ONEDNN is chosen
