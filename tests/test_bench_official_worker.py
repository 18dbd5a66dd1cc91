"""The official Grounding DINO baseline's worker process as the stage table drives it
(`bench_baseline.official_grounding_dino`), with a stand-in script in place of the official code: the
protocol, what the timed inference holds, the process's end and its failures, without the official venv."""

import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_baseline  # noqa: E402
import official_env  # noqa: E402

pytestmark = pytest.mark.subprocess

#: the stand-in worker: `ready`, one job, one answer, then a slow exit (as a GPU process tearing CUDA down);
#: its first argument picks a misbehaviour
STAND_IN = textwrap.dedent("""
    import json, sys, time
    mode = sys.argv[1]
    if mode == "chatty":
        print("a library's own line", flush=True)
    print("ready 0.0", flush=True)
    job = sys.stdin.readline()
    if not job:
        sys.exit(0)
    if mode == "dies":
        print("boom: out of memory", file=sys.stderr, flush=True)
        sys.exit(1)
    print(json.dumps({"boxes": [[1, 2, 3, 4]], "phrases": ["cat"], "infer_s": 0.0, "peak_device_mb": 123.0}),
          flush=True)
    time.sleep(1.0)
""")


@pytest.fixture
def baseline(tmp_path, monkeypatch):
    """(load, infer) of the official baseline, its worker replaced by the stand-in in `mode`."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    real_popen = subprocess.Popen

    def make(mode: str):
        monkeypatch.setattr(official_env, "official_python", lambda: Path(sys.executable))
        monkeypatch.setattr(subprocess, "Popen",
                            lambda command, **kw: real_popen([sys.executable, str(script), mode], **kw))
        kit = types.SimpleNamespace(official_gdino_spec=lambda: tmp_path / "spec.json", gd_size=(32, 48))
        return bench_baseline.official_grounding_dino(kit)

    return make


def test_the_timed_inference_holds_neither_the_exit_and_the_workers_own_gpu_peak_comes_back(baseline):
    load, infer = baseline("ok")
    worker = load()
    start = time.perf_counter()
    boxes, phrases = infer(worker, np.zeros((8, 8, 3), np.uint8), ["cat"])
    inferred = time.perf_counter() - start
    assert boxes.tolist() == [[1, 2, 3, 4]] and phrases == ["cat"] and worker.peak_device_mb == 123.0
    assert inferred < 0.8  # the stand-in's 1 s exit is not in it
    start = time.perf_counter()
    worker.close()  # what `del model` does in `bench_jobs.stage_pair`, outside its timers
    assert time.perf_counter() - start >= 0.8 and worker.proc.returncode == 0
    worker.close()  # twice (and again from __del__): harmless


def test_a_line_before_ready_is_a_load_error_that_says_it_not_a_hang(baseline):
    load, _ = baseline("chatty")
    with pytest.raises(RuntimeError, match=r"failed to load: \(its stdout: a library's own line\)"):
        load()


def test_a_worker_that_dies_on_its_job_is_one_error_with_what_it_said(baseline):
    load, infer = baseline("dies")
    worker = load()
    with pytest.raises(RuntimeError, match="boom: out of memory"):
        infer(worker, np.zeros((8, 8, 3), np.uint8), ["cat"])
