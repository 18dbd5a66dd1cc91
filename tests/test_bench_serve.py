"""`benchmarks/bench_serve.py --quick`: the loopback load test runs end to end, by itself, and its
checks hold (zero errors, RSS within its bound, micro-batching seen, clean exit). The figures
themselves live in benchmarks/results_standalone.md, never in assertions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))
pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def test_bench_serve_quick(tmp_path):
    if not (REFERENCE / "fixtures" / "ram" / "checkpoint.pth").is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    pytest.importorskip("uvicorn")
    out = tmp_path / "serve.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_serve.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "RECOGNIZE_REFERENCE": str(REFERENCE)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["checks"] == {"zero_errors": True, "rss_stable": True, "micro_batching_seen": True,
                                "clean_exit": True}
    assert report["concurrent"]["requests"] == report["sequential_http"]["requests"] == 16
    assert report["sequential_http"]["batching"]["stage_calls"] == 16  # every image computed, one by one
    assert report["machine"]["cpu"] and isinstance(report["machine"]["simd_flags"], list)
