"""The Ray engine gives the same outputs as the local engine (on a local 2-CPU Ray instance)."""

import json

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

from clihelp import SUPPORT  # noqa: E402

from recognize.engines.base import RunStopped  # noqa: E402
from recognize.engines.ray_engine import RayEngine  # noqa: E402
from recognize.pipeline import Pipeline  # noqa: E402
from recognize.runner import run_to_folder  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    import os

    os.environ["RECOGNIZE_PLUGINS"] = "teststages"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RECOGNIZE_PLUGINS": "teststages", "PYTHONPATH": os.environ["PYTHONPATH"]}})
    yield
    ray.shutdown()
    os.environ.pop("RECOGNIZE_PLUGINS", None)


def results(out):
    return {p.relative_to(out).as_posix(): json.loads(p.read_text()) for p in sorted(out.rglob("*.json"))
            if p.name not in ("summary.json", "manifest.json")}


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_equals_local(local_ray, test_stages, image_folder, tmp_path, workers):
    (image_folder / "broken.jpg").write_bytes(b"nope")
    (image_folder / "boom.png").write_bytes((image_folder / "white.png").read_bytes())

    def pipeline():
        return Pipeline([test_stages.Brightness(), test_stages.Explode(on="boom"), test_stages.CenterBox(),
                         test_stages.CountDataset()], batch_size=2)

    local = run_to_folder(pipeline(), [image_folder], tmp_path / "local", quiet=True)
    remote = run_to_folder(pipeline(), [image_folder], tmp_path / "ray", quiet=True, engine=RayEngine(num_workers=workers))
    assert results(tmp_path / "local") == results(tmp_path / "ray")
    assert len(results(tmp_path / "ray")) == 3
    assert sorted(f["name"] for f in local.failures) == sorted(f["name"] for f in remote.failures) == ["boom.png", "broken.jpg"]
    assert remote.engine == "ray" and set(remote.timings) >= {"brightness", "center_box"}


def test_no_stages_runs_on_ray_as_locally(local_ray, image_folder, tmp_path):
    (image_folder / "broken.jpg").write_bytes(b"nope")
    local = run_to_folder(Pipeline([]), [image_folder], tmp_path / "local", quiet=True)
    remote = run_to_folder(Pipeline([]), [image_folder], tmp_path / "ray", quiet=True, engine=RayEngine())
    assert results(tmp_path / "local") == results(tmp_path / "ray") and len(results(tmp_path / "ray")) == 3
    assert [f["name"] for f in local.failures] == [f["name"] for f in remote.failures] == ["broken.jpg"]


def test_an_error_on_every_image_stops_the_ray_run_once(local_ray, test_stages, image_folder, tmp_path):
    with pytest.raises(RunStopped, match="'explode' failed on each of the 3 images"):
        run_to_folder(Pipeline([test_stages.Explode(on="")], batch_size=3), [image_folder], tmp_path / "ray",
                      quiet=True, engine=RayEngine())
