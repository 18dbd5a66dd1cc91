"""A partitioned dataset-scope stage on a local Ray instance: a group-by on workers that gives the local
engine's result exactly, also when a worker process is killed mid-way (benchmarks/scale_rehearsal.py at
a small N)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import scale_rehearsal  # noqa: E402

from recognize.engines.local import LocalEngine  # noqa: E402
from recognize.engines.ray_engine import RayEngine  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    path = os.pathsep.join([str(BENCHMARKS), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RECOGNIZE_PLUGINS": "scale_rehearsal", "PYTHONPATH": path}})
    yield
    ray.shutdown()


def test_partitioned_stage_on_ray_equals_local_and_survives_a_killed_worker(local_ray, tmp_path):
    frames = list(scale_rehearsal.synthetic_frames(600))
    local = scale_rehearsal.run_engine(LocalEngine(), [f.model_copy(deep=True) for f in frames])
    marker = tmp_path / "killed"
    streamed = scale_rehearsal.synthetic_frames(600)  # a generator: the driver never holds the frames
    remote = scale_rehearsal.run_engine(RayEngine(num_workers=2), streamed, kill_marker=str(marker),
                                        kill_at=frames[300].name)
    assert marker.is_file()  # a partition worker really died half-way (and its batch was retried)
    assert int(marker.read_text()) != os.getpid()
    assert local["dropped_regions"] > 0 and remote["digest"] == local["digest"]
    assert remote["frames"] == local["frames"] == 600

