"""One run of the engine benchmark, in a fresh interpreter: a ram_plus tagging recipe through
`recognize.runner.run_to_folder` on the local engine, or on Ray with N workers.

Why a fresh interpreter, not a fork of `run.py` like the other jobs: `run.py` imports torch, timm
and the plugins before it forks, so a forked local run found its libraries imported (its model
load measured 0.43 s) while a Ray worker, a process of its own, imported them inside the timed
run (torch 1.7 s, then timm -> torchvision -> torch._dynamo 1.5 s, counted in its model load:
1.97 s). Both sides are timed from the same point here, their process's start, as a user's
`recognize run` is: each pays its own imports once, where they fall (the local process in its
model load; the Ray driver only `recognize` and `ray`, its worker torch and the stages' modules).

`seconds`: from the parent's start of this process to the end of `run_to_folder`, less Ray's own
start (`RayEngine.start`, the local instance `recognize run --engine ray` starts, reported apart as
`ray_init_s`: a cluster is already up). `run_s`:
`run_to_folder` alone (what earlier results reported). `imports_s`: process start to the call.

Run by `run.py` as `python bench_engines.py` with the job as JSON on stdin (`engine`, `workers`,
`folder`, `params`: the ram_plus stage's parameters, `spawned`: the parent's `time.time()` when it
started this process); prints the result as JSON on stdout's last line. Imports nothing the run
itself does not (no torch here: the Ray driver never needs it).
"""

from __future__ import annotations

import time

STARTED = time.time()  # before any import: what the interpreter's own start cost is the same for both sides

import json  # after the clock on purpose
import sys
import tempfile
from pathlib import Path
from typing import Any


def run(job: dict[str, Any]) -> dict[str, Any]:
    from recognize import plugins
    from recognize.pipeline import Pipeline
    from recognize.runner import run_to_folder

    spawned = float(job.get("spawned") or STARTED)
    pipeline = Pipeline([plugins.get_stage("ram_plus")({**job["params"], "device": "cpu"})], batch_size=4,
                        device="cpu", name="tag")
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="recognize-bench-") as tmp:
        if job["engine"] == "local":
            start = time.time()
            summary = run_to_folder(pipeline, [job["folder"]], Path(tmp) / "out", quiet=True, overwrite=True)
            end = time.time()
            result["local"] = _engine_result(summary, spawned, start, end, 1, ray_init=0.0)
            return result
        import ray

        from recognize.engines.ray_engine import RayEngine

        workers = int(job["workers"])
        engine = RayEngine(num_workers=workers)
        start = time.time()
        engine.start()  # the local instance `recognize run --engine ray` starts (its workers inherit their settings)
        ray_init = time.time() - start
        result["ray_init_s"] = ray_init
        try:
            start = time.time()
            summary = run_to_folder(pipeline, [job["folder"]], Path(tmp) / "out", quiet=True, overwrite=True,
                                    engine=engine)
            end = time.time()
        finally:
            ray.shutdown()
        result[f"ray_{workers}"] = _engine_result(summary, spawned, start, end, workers, ray_init=ray_init)
    return result


def _engine_result(summary: Any, spawned: float, start: float, end: float, workers: int,
                   ray_init: float) -> dict[str, Any]:
    if summary.failed:
        raise RuntimeError(f"{summary.failed} image(s) failed: {summary.failures[0]}")
    seconds = end - spawned - ray_init
    return {"workers": workers, "images": summary.processed, "seconds": seconds,
            "images_per_s": summary.processed / seconds, "run_s": end - start,
            "imports_s": start - spawned - ray_init, "wall": summary.wall}


def main() -> int:
    job = json.loads(sys.stdin.read())
    print(json.dumps(run(job)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
