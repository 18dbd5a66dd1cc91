"""`benchmarks/bench_gdino_official.py --quick` runs ours, ours with grid_sample deformable sampling,
transformers' plain classes and the official Grounding DINO side by side and reports times, FLOPs, parts and operator tables (the full-size run is
documented in `benchmarks/README.md`; it is not a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def test_quick_run_reports_every_side(tmp_path):
    out = tmp_path / "gdino.json"
    env = {**os.environ, "RECOGNIZE_BENCH_CACHE": os.environ.get("RECOGNIZE_BENCH_CACHE", str(tmp_path / "cache"))}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gdino_official.py"), "--quick", "--images", "1",
                           "--repeats", "1", "--plain", "--grid-sample", "--profile", "--out", str(out)],
                          check=False, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["summary"]["sides"]) == {"ours", "plain", "grid_sample", "official"}
    assert report["flops"] > 0 and report["matmul"]["gflops"] > 0
    for side in ("ours", "plain", "grid_sample", "official"):
        assert report["summary"]["sides"][side]["s"] > 0
        assert report["parts"][side]["total"] > 0
        assert report["parts"][side]["deformable attention (enc+dec)"] > 0  # the hooks found each side's modules
    assert all(report["profile"][side]["ops"] for side in ("ours", "plain", "grid_sample", "official"))
    assert "aten::grid_sampler_2d" not in {row["op"] for row in report["profile"]["ours"]["ops"]}
    assert "| official / ours" not in proc.stdout and "| ours |" in proc.stdout
