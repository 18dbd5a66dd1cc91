"""What the Ray engine's workers run with, decided on the driver (no Ray started): `actor_env`,
`worker_settings`, and the driver's environment only borrowed while a local Ray starts."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ray")

from recognize.engines import ray_engine
from recognize.engines.ray_engine import RayEngine


def test_worker_environments(monkeypatch):
    from recognize.engines.ray_actors import actor_env
    from recognize.engines.ray_engine import worker_settings

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    monkeypatch.delenv("RECOGNIZE_KEEP_FREED_MEMORY", raising=False)
    assert actor_env(local=True) == {"MALLOC_ARENA_MAX": "1", "RAY_worker_niceness": "0"}
    assert actor_env(local=False) == {"MALLOC_ARENA_MAX": "1"}  # a cluster's (or the user's) Ray keeps its own
    monkeypatch.setenv("RAY_worker_niceness", "10")  # the user's choice, everywhere
    assert actor_env(local=True)["RAY_worker_niceness"] == actor_env(local=False)["RAY_worker_niceness"] == "10"
    monkeypatch.setenv("RECOGNIZE_KEEP_FREED_MEMORY", "0")  # the heap settings switched off: none passed on
    assert "MALLOC_ARENA_MAX" not in actor_env(local=True)
    monkeypatch.setenv("RECOGNIZE_RAY_WORKERS", "3")  # the driver's own
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    assert "RECOGNIZE_RAY_WORKERS" not in worker_settings() and worker_settings()["RECOGNIZE_OFFLINE"] == "1"


def test_the_environment_is_only_borrowed_while_ray_starts(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setenv("RAY_worker_niceness", "5")
    with pytest.raises(RuntimeError), ray_engine._environment({"MALLOC_ARENA_MAX": "1", "RAY_worker_niceness": "0"}):
        assert os.environ["MALLOC_ARENA_MAX"] == "1" and os.environ["RAY_worker_niceness"] == "0"
        raise RuntimeError("ray.init failed")
    assert "MALLOC_ARENA_MAX" not in os.environ and os.environ["RAY_worker_niceness"] == "5"


@pytest.mark.parametrize(("address", "threads"), [(None, 2), ("auto", 2), ("local", 2), ("127.0.0.1:6379", 2),
                                                  ("ray://localhost:10001", 2), ("ray://head:10001", None)])
def test_workers_share_this_machines_cores_only_on_a_ray_on_this_machine(monkeypatch, address, threads):
    monkeypatch.delenv("RECOGNIZE_RAY_THREADS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert RayEngine(num_workers=2, address=address).worker_threads() == threads
