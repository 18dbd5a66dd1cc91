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



def test_a_tagger_that_cannot_load_in_a_partition_worker_is_the_local_engines_one_line_error(local_ray, reference,
                                                                                           tmp_path):
    from recognize import plugins
    from recognize.engines.base import RunStopped
    from recognize.engines.ray_engine import stage_specs
    from recognize.engines.ray_partition import run_partitioned_on_ray
    from recognize.errors import ModelFileError
    from recognize.frame import Frame, Region

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    stage = plugins.get_stage("region_outliers")(
        tagger="ram", tagger_with={"config": str(reference / "fixtures" / "ram" / "config.json"),
                                   "checkpoint": str(broken)})
    with pytest.raises(ModelFileError) as local:  # what the local engine reports (exit code 3)
        plugins.get_stage("region_outliers")(stage.params).ensure_loaded()
    frames = [Frame(source=f"/img{i}.png", name=f"img{i}", width=8, height=8,
                    regions=[Region(box=(0.0, 0.0, 4.0, 4.0), tag="cat")]) for i in range(5)]
    with pytest.raises(RunStopped) as stopped:
        list(run_partitioned_on_ray(stage, stage_specs([stage])[0], frames, num_workers=1))
    assert str(stopped.value) == str(local.value) and "\n" not in str(stopped.value)
    assert "broken.pth" in str(stopped.value) and stopped.value.exit_code == local.value.exit_code == 3
