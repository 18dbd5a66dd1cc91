"""What the Ray engine's workers run with, decided on the driver (no Ray started): `actor_env`,
`worker_settings`, and the driver's environment only borrowed while a local Ray starts."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ray")

from recognize import heap
from recognize.engines import ray_engine
from recognize.engines.ray_engine import RayEngine


def test_worker_environments(monkeypatch):
    from recognize import heap
    from recognize.engines.ray_actors import actor_env
    from recognize.engines.ray_engine import worker_settings

    monkeypatch.delenv("RECOGNIZE_KEEP_FREED_MEMORY", raising=False)
    one_heap = heap.worker_env()  # MALLOC_ARENA_MAX=1 on glibc
    assert actor_env(local=True) == {**one_heap, "RAY_worker_niceness": "0"}  # Ray's +15 not applied
    assert actor_env(local=False) == one_heap  # a cluster's (or the user's) Ray keeps its own priority
    monkeypatch.setenv("RECOGNIZE_KEEP_FREED_MEMORY", "0")  # the heap settings switched off: none passed on
    assert "MALLOC_ARENA_MAX" not in actor_env(local=True)
    monkeypatch.setenv("RECOGNIZE_RAY_WORKERS", "3")  # the driver's own
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    assert "RECOGNIZE_RAY_WORKERS" not in worker_settings() and worker_settings()["RECOGNIZE_OFFLINE"] == "1"


def test_a_submitted_jobs_own_variables_are_not_repeated(monkeypatch):
    # under `ray job submit`, ray.init refuses a runtime_env that repeats a variable of the job's
    import json

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       json.dumps({"runtime_env": {"env_vars": {"RECOGNIZE_HOME": "/mnt/models"}}}))
    monkeypatch.setenv("RECOGNIZE_HOME", "/mnt/models")
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    env = ray_engine._without({**ray_engine.worker_settings()}, ray_engine._submitted_job_env())
    assert "RECOGNIZE_HOME" not in env and env["RECOGNIZE_OFFLINE"] == "1"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "not json")
    assert ray_engine._submitted_job_env() == {}


def test_the_environment_is_only_borrowed_while_ray_starts(monkeypatch):
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray is up in this process: start() would not call ray.init")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("RECOGNIZE_KEEP_FREED_MEMORY", raising=False)
    monkeypatch.setenv("RAY_worker_niceness", "5")
    seen = {}

    def failing_init(**options):
        seen.update(options, arena=os.environ.get("MALLOC_ARENA_MAX"), niceness=os.environ.get("RAY_worker_niceness"))
        raise RuntimeError("ray.init failed")

    monkeypatch.setattr(ray, "init", failing_init)
    with pytest.raises(RuntimeError):
        RayEngine(address=None).start()
    # what Ray's processes would inherit while it started: one heap (on glibc), Ray's +15 not applied
    assert seen["address"] == "local" and seen["niceness"] == "0" and "runtime_env" not in seen
    assert seen["arena"] == heap.worker_env().get("MALLOC_ARENA_MAX")
    assert "MALLOC_ARENA_MAX" not in os.environ and os.environ["RAY_worker_niceness"] == "5"


@pytest.mark.parametrize(("address", "warned"), [(None, True), ("local", False)])
def test_a_cluster_left_by_ray_start_is_named_when_a_new_ray_starts(monkeypatch, tmp_path, caplog, address, warned):
    """Ray's record of `ray start`'s cluster (RAY_TMPDIR/ray/ray_current_cluster, what RAY_ADDRESS=auto
    joins) gets one warning line when the engine starts a Ray of its own anyway; an explicit "local" none."""
    import ray

    if ray.is_initialized():
        pytest.skip("a Ray is up in this process: start() would not call ray.init")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.1.2.3:6379")

    def failing_init(**options):
        raise RuntimeError("ray.init failed")

    monkeypatch.setattr(ray, "init", failing_init)
    with caplog.at_level("WARNING", logger="recognize.engines.ray_engine"), pytest.raises(RuntimeError):
        RayEngine(address=address).start()
    lines = [r.getMessage() for r in caplog.records if r.name == "recognize.engines.ray_engine"]
    assert lines == (["Ray's record names a cluster that `ray start` started on this machine (10.1.2.3:6379); this "
                      "run starts its own Ray (if that cluster still runs, RAY_ADDRESS=auto runs on it)"]
                     if warned else [])
    (tmp_path / "ray" / "ray_current_cluster").unlink()  # `ray stop` removes it: nothing to say
    caplog.clear()
    with caplog.at_level("WARNING", logger="recognize.engines.ray_engine"), pytest.raises(RuntimeError):
        RayEngine(address=address).start()
    assert [r for r in caplog.records if r.name == "recognize.engines.ray_engine"] == []


@pytest.mark.parametrize(("address", "threads"), [(None, 2), ("local", 2), ("auto", None), ("ray://head:10001", None)])
def test_workers_share_this_machines_cores_only_on_a_local_instance(monkeypatch, address, threads):
    monkeypatch.delenv("RECOGNIZE_RAY_THREADS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert RayEngine(num_workers=2, address=address).worker_threads() == threads
