"""A local Ray that the engine starts itself (`RayEngine.start`): its workers inherit this process's
environment (recognize's settings, one heap, this process's priority) with no `runtime_env`, so that Ray's
prestarted workers can serve the actors."""

from __future__ import annotations

import json
import os

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

from clihelp import SUPPORT

from recognize.engines import ray_engine
from recognize.engines.ray_engine import RayEngine
from recognize.pipeline import Pipeline
from recognize.runner import run_to_folder


def test_the_engines_own_ray_hands_its_environment_down(test_stages, image_folder, tmp_path, monkeypatch):
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setenv("RECOGNIZE_PLUGINS", "teststages")  # the workers find the test stages only if inherited
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]))
    for name in ("RAY_ADDRESS", "RAY_worker_niceness", "MALLOC_ARENA_MAX", "RECOGNIZE_KEEP_FREED_MEMORY"):
        monkeypatch.delenv(name, raising=False)
    try:
        summary = run_to_folder(Pipeline([test_stages.ProcessInfo()]), [image_folder], tmp_path / "out", quiet=True,
                                engine=RayEngine(num_workers=1))
        assert ray_engine._workers_inherit_env()  # so the actors were started without a runtime_env
        assert ray.get_runtime_context().runtime_env == {} and RayEngine().worker_env() is None
    finally:
        ray.shutdown()
    assert summary.processed == 3 and not summary.failed, summary.failures
    seen = [json.loads(p.read_text())["meta"]["process"] for p in (tmp_path / "out").rglob("*.json")
            if p.name not in ("summary.json", "manifest.json")]
    assert seen and all(p["pid"] != os.getpid() for p in seen)
    assert all(p["niceness"] == os.nice(0) and p["malloc_arena_max"] == "1" for p in seen), seen
    # set only while Ray started: this process's own environment is as it was
    assert "MALLOC_ARENA_MAX" not in os.environ and "RAY_worker_niceness" not in os.environ
    assert not ray_engine._workers_inherit_env()  # Ray is down: a later ray.init of the user's is not ours
