"""The Ray engine gives the same outputs as the local engine (on a local 2-CPU Ray instance)."""

import json
import os
import re

import pytest

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

from clihelp import SUPPORT

from recognize.engines.base import RunStopped
from recognize.engines.ray_engine import RayEngine
from recognize.pipeline import Pipeline
from recognize.runner import run_to_folder


@pytest.fixture(scope="module")
def local_ray():
    import os

    with pytest.MonkeyPatch.context() as monkeypatch:  # module scope: the fixture's own monkeypatch
        monkeypatch.setenv("RECOGNIZE_PLUGINS", "teststages")
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RECOGNIZE_PLUGINS": "teststages", "PYTHONPATH": os.environ["PYTHONPATH"]}})
        yield
        ray.shutdown()


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


def test_workers_on_a_ray_the_user_started_get_one_heap_and_the_drivers_settings(
        local_ray, test_stages, image_folder, tmp_path, monkeypatch):
    # `local_ray` is the user's own ray.init, without recognize's environment: the actors get theirs set
    # (else each compute thread had a malloc arena of its own), and this run's recognize settings
    monkeypatch.setenv("RECOGNIZE_FEATURE_CACHE_MB", "7")
    monkeypatch.delenv("RECOGNIZE_KEEP_FREED_MEMORY", raising=False)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    run_to_folder(Pipeline([test_stages.ProcessInfo()]), [image_folder], tmp_path / "out", quiet=True,
                  engine=RayEngine(num_workers=1))
    seen = [frame["meta"]["process"] for frame in results(tmp_path / "out").values()]
    assert seen and all(p["pid"] != os.getpid() for p in seen)  # computed on a worker
    assert all(p["malloc_arena_max"] == "1" and p["feature_cache_mb"] == "7" for p in seen), seen


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


def test_progress_shows_images_per_second_and_eta_across_the_cluster(local_ray, test_stages, image_folder,
                                                                       tmp_path, capsys):
    """The runner's bar counts every worker's images as they become final on the driver."""
    pipeline = Pipeline([test_stages.Brightness(), test_stages.CenterBox()], batch_size=1)
    run_to_folder(pipeline, [image_folder], tmp_path / "out", quiet=False, engine=RayEngine(num_workers=2))
    err = capsys.readouterr().err
    assert "3/3" in err
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+(img/s|s/img)\]", err), err  # elapsed<ETA, rate


def test_a_resumed_ray_run_skips_by_identity_from_the_shards(local_ray, test_stages, image_folder, tmp_path):
    from recognize import plugins

    def pipeline():
        return Pipeline([test_stages.Brightness(), test_stages.CenterBox(), test_stages.CountDataset()],
                        [plugins.get_stage("shards")(frames_per_shard=2)], batch_size=2)

    out = tmp_path / "out"
    first = run_to_folder(pipeline(), [image_folder], out, quiet=True, engine=RayEngine(num_workers=2))
    (image_folder / "extra.png").write_bytes((image_folder / "white.png").read_bytes())
    second = run_to_folder(pipeline(), [image_folder], out, quiet=True, engine=RayEngine(num_workers=2))
    assert (first.processed, second.processed, second.skipped) == (3, 1, 3)
    from recognize.outputs.shards import read_shards

    assert sorted(f.name for f in read_shards(out)) == ["black.jpg", "extra.png", "sub/noise.png", "white.png"]


def test_ray_workers_read_urls_from_a_list_file(local_ray, test_stages, image_folder, tmp_path):
    """Inputs need no shared filesystem: each worker opens the URLs itself (HTTP on loopback)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(image_folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        root = f"http://127.0.0.1:{server.server_address[1]}"
        listing = tmp_path / "urls.txt"
        listing.write_text(f"{root}/white.png\n{root}/sub/noise.png\n{root}/missing.png\n")

        def pipeline():
            return Pipeline([test_stages.Brightness(), test_stages.CenterBox()], batch_size=2)

        local = run_to_folder(pipeline(), [listing], tmp_path / "local", quiet=True)
        remote = run_to_folder(pipeline(), [listing], tmp_path / "ray", quiet=True, engine=RayEngine(num_workers=2))
    finally:
        server.shutdown()
        server.server_close()
    assert results(tmp_path / "local") == results(tmp_path / "ray") and len(results(tmp_path / "ray")) == 2
    assert (remote.processed, remote.failed) == (local.processed, local.failed) == (2, 1)


def test_missing_weights_are_one_error_before_ray_starts(local_ray, cache_home, image_folder, tmp_path):
    from recognize import plugins
    from recognize.errors import ModelFileError

    with pytest.raises(ModelFileError, match="missing"):
        run_to_folder(Pipeline([plugins.get_stage("ram")()]), [image_folder], tmp_path / "ray", quiet=True,
                      engine=RayEngine())
    assert not (tmp_path / "ray" / "manifest.json").exists()


def test_a_stage_that_cannot_load_on_a_worker_stops_the_run_with_its_exit_code(local_ray, reference, image_folder,
                                                                               tmp_path):
    from recognize import plugins

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    ram = plugins.get_stage("ram")(config=str(reference / "fixtures" / "ram" / "config.json"), checkpoint=str(broken))
    with pytest.raises(RunStopped, match="broken.pth") as stopped:
        run_to_folder(Pipeline([ram]), [image_folder], tmp_path / "ray", quiet=True, engine=RayEngine())
    assert stopped.value.exit_code == 3 and "\n" not in str(stopped.value)


def test_worker_threads_share_this_machines_cores_on_a_local_instance(monkeypatch):
    import os

    from recognize.engines.ray_engine import RayEngine
    from recognize.errors import SettingError

    monkeypatch.delenv("RECOGNIZE_RAY_THREADS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cores = os.cpu_count() or 1
    assert RayEngine(num_workers=1).worker_threads() == cores
    assert RayEngine(num_workers=cores * 2).worker_threads() == 1
    assert RayEngine(num_workers=1, address="ray://head:10001").worker_threads() is None  # Ray's own setting
    monkeypatch.setenv("RECOGNIZE_RAY_THREADS", "3")
    assert RayEngine(num_workers=1).worker_threads() == 3
    monkeypatch.setenv("RECOGNIZE_RAY_THREADS", "many")
    with pytest.raises(SettingError, match="RECOGNIZE_RAY_THREADS"):
        RayEngine(num_workers=1).worker_threads()


def test_what_ray_reserves_per_worker_comes_from_the_settings_unless_given(monkeypatch):
    from recognize.errors import SettingError

    monkeypatch.delenv("RECOGNIZE_RAY_CPUS", raising=False)
    monkeypatch.delenv("RECOGNIZE_RAY_GPUS", raising=False)
    engine = RayEngine(num_workers=1)
    assert (engine.num_cpus_per_worker, engine.num_gpus_per_worker) == (1.0, 0.0)
    monkeypatch.setenv("RECOGNIZE_RAY_CPUS", "8")
    monkeypatch.setenv("RECOGNIZE_RAY_GPUS", "0.5")
    engine = RayEngine(num_workers=1)
    assert (engine.num_cpus_per_worker, engine.num_gpus_per_worker) == (8.0, 0.5)
    assert RayEngine(num_workers=1, num_gpus_per_worker=1).num_gpus_per_worker == 1  # the argument wins
    from recognize.engines.ray_engine import worker_settings

    assert not {"RECOGNIZE_RAY_CPUS", "RECOGNIZE_RAY_GPUS"} & set(worker_settings())  # the driver's business
    for bad in ("-1", "one", "nan", "inf"):
        monkeypatch.setenv("RECOGNIZE_RAY_GPUS", bad)
        with pytest.raises(SettingError, match=f"RECOGNIZE_RAY_GPUS='{bad}'"):
            RayEngine(num_workers=1)


def test_a_bad_prefetch_workers_setting_stops_the_load_before_ray_starts(monkeypatch, test_stages):
    from recognize.errors import SettingError

    monkeypatch.setenv("RECOGNIZE_PREFETCH_WORKERS", "none")
    engine = RayEngine(num_workers=1)
    monkeypatch.setattr(engine, "start", lambda: pytest.fail("Ray started"))
    with pytest.raises(SettingError, match="RECOGNIZE_PREFETCH_WORKERS='none'"):
        engine.load(Pipeline([test_stages.Brightness({})]))


def test_a_killed_worker_is_restarted_and_its_batch_retried(local_ray, test_stages, image_folder, tmp_path):
    """Ray's own fault tolerance: the actor's process dies on its first batch, Ray restarts it
    (models loaded again) and retries the batch; the outputs equal the local engine's."""
    marker = tmp_path / "died"

    def pipeline(crash: bool):
        stages = [test_stages.Brightness(), test_stages.CenterBox()]
        if crash:
            stages.insert(1, test_stages.CrashOn(on="white", marker=str(marker)))
        return Pipeline(stages, batch_size=2)

    run_to_folder(pipeline(False), [image_folder], tmp_path / "local", quiet=True)
    remote = run_to_folder(pipeline(True), [image_folder], tmp_path / "ray", quiet=True, engine=RayEngine(num_workers=1))
    assert marker.is_file()  # the worker really died
    assert remote.processed == 3 and not remote.failures
    assert results(tmp_path / "local") == results(tmp_path / "ray")


def test_an_image_that_kills_every_worker_stops_the_run_in_one_line(local_ray, test_stages, image_folder, tmp_path):
    from recognize.engines.ray_actors import RETRIES

    pipeline = Pipeline([test_stages.CrashOn(on="white")], batch_size=1)
    with pytest.raises(RunStopped, match=f"a Ray worker died {RETRIES + 1} times") as stopped:
        run_to_folder(pipeline, [image_folder], tmp_path / "ray", quiet=True, engine=RayEngine(num_workers=1))
    assert "\n" not in str(stopped.value)


def test_load_starts_the_workers_once_and_the_run_uses_them(local_ray, test_stages, image_folder, tmp_path):
    """`load()` starts the first image segment's pool (the runner calls it, then `run` again)."""
    engine = RayEngine(num_workers=1)
    pipeline = Pipeline([test_stages.Brightness(), test_stages.CountDataset(), test_stages.CenterBox()])
    engine.load(pipeline)
    engine.load(pipeline)
    started = list(engine._started.values())
    assert len(started) == 1 and [spec["use"] for spec in started[0].specs] == ["brightness"]
    run_to_folder(pipeline, [image_folder], tmp_path / "ray", quiet=True, engine=engine)
    assert not engine._started and not started[0].actors  # used, then stopped


def test_a_resume_with_every_image_done_starts_no_worker(local_ray, test_stages, image_folder, tmp_path, monkeypatch):
    pools = []  # the stages of every worker pool started (each worker loads their models)
    start_pool = RayEngine._pool
    monkeypatch.setattr(RayEngine, "_pool", lambda engine, specs: pools.append(specs) or start_pool(engine, specs))
    pipeline = Pipeline([test_stages.Brightness(), test_stages.CenterBox()])
    run_to_folder(pipeline, [image_folder], tmp_path / "ray", quiet=True, engine=RayEngine(num_workers=1))
    assert len(pools) == 1
    again = run_to_folder(pipeline, [image_folder], tmp_path / "ray", quiet=True, engine=RayEngine(num_workers=1))
    assert (again.processed, again.skipped) == (0, 3) and len(pools) == 1  # nothing to do: no worker started


def test_the_driver_hands_its_kept_heap_back_at_the_end_of_a_run(local_ray, test_stages, image_folder, tmp_path,
                                                                 monkeypatch):
    """Dataset stages run in the driver between the workers' segments, keeping freed memory for reuse
    (`recognize.heap`); `release()` between stages no longer trims, so the run's end does, as locally."""
    from recognize import heap

    trims: list[int] = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(1))
    pipeline = Pipeline([test_stages.Brightness(), test_stages.CountDataset()], batch_size=2)
    results_ = RayEngine(num_workers=1).run(pipeline, [])
    assert list(results_) == [] and not trims  # nothing ran: nothing to hand back
    run_to_folder(pipeline, [image_folder], tmp_path / "ray", quiet=True, engine=RayEngine(num_workers=1))
    assert trims, "the Ray engine's run ended without trimming the driver's heap"
