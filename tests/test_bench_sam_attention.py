"""`benchmarks/bench_sam_attention.py --quick` runs the three encoder forwards and reports sane numbers
(speed itself is never asserted: the full run is recorded in `benchmarks/README.md`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_compares_the_three_ways():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_sam_attention.py"), "--quick",
                           "--repeats", "1", "--profile"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["model"] == "quick" and result["gflop"] > 0
    assert result["matmul_gflops"] > 0 and result["matmul_gflops_onednn"] > 0
    assert result["lean_attention_bit_identical"] is True
    for way in ("segment_anything", "lean_attention", "lean_block"):
        assert result[way]["median_s"] > 0 and 0 < result[way]["share_of_matmul"]
        assert result[way]["max_abs_diff"] <= 1e-5 * result[way]["max_abs_reference"]
        shares = result["profile_self_cpu_shares"][way]
        assert abs(sum(shares.values()) - 1) < 0.01
    assert result["segment_anything"]["max_abs_diff"] == 0
    assert "fused attention (SDPA)" in result["profile_self_cpu_shares"]["lean_block"]
    assert "softmax" in result["profile_self_cpu_shares"]["segment_anything"]
