"""`-o URL`: a run's outputs written through fsspec to an HTTP server and an S3 API on loopback (moto),
resumed from the remote journal on a fresh machine (an empty RECOGNIZE_HOME), refused or overwritten
like a local folder, every failure one line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from put_server import put_server

import recognize
from recognize import plugins
from recognize.errors import InputError, RecognizeError
from recognize.frame import Frame
from recognize.outputs.shards import read_shards
from recognize.pipeline import Pipeline
from recognize.remote_output import JournalSync, RemoteFolder, run_to_output
from recognize.runner import run_to_folder
from recognize.stage import Stage

NAMES = [f"im{i}.png" for i in range(5)]


class InterruptOn(Stage):
    """Raises KeyboardInterrupt (a user's Ctrl-C) on the image named by $TEST_INTERRUPT_ON."""

    name = "interrupt_on"
    kind = "filter"

    def process(self, frames: list[Frame]) -> list[Frame]:
        target = os.environ.get("TEST_INTERRUPT_ON")
        if target and any(frame.source.endswith(target) for frame in frames):
            raise KeyboardInterrupt
        return frames


class _LocalStages:
    @recognize.hookimpl
    def register_stages(self, register):
        register(InterruptOn)


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(NAMES):
        Image.fromarray(np.full((20 + i, 30, 3), 40 * i, np.uint8)).save(folder / name)
    return folder


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """This machine's RECOGNIZE_HOME (staging folders live there); uploads after every image."""
    folder = tmp_path / "home"
    monkeypatch.setenv("RECOGNIZE_HOME", str(folder))
    monkeypatch.setenv("RECOGNIZE_SYNC_SECONDS", "0")
    return folder


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    with put_server(root) as running:
        running.root = root
        yield running


@pytest.fixture
def s3_bucket(monkeypatch):
    """A real S3 API (moto's server) on 127.0.0.1 with one bucket; s3fs talks to it."""
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    moto = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{host}:{port}")
    # moto keeps its buckets per process, not per server: start each test empty
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")).close()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir("recognize-test")
    fs.url = "s3://recognize-test"
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()
    moto.stop()


@pytest.fixture
def stages(test_stages):
    with plugins.registered(_LocalStages(), name="remote-output-tests"):
        yield test_stages


def pipeline(test_stages, *, frames_per_shard=2, json_files=False):
    outputs = [plugins.get_stage("shards")(frames_per_shard=frames_per_shard), plugins.get_stage("coco")()]
    if json_files:
        outputs.append(plugins.get_stage("json")())
    return Pipeline([test_stages.Brightness(), test_stages.CenterBox(), test_stages.BoxMask(), InterruptOn()],
                    outputs, batch_size=1)


def tree(root: Path, skip=(".recognize", "summary.json")) -> dict[str, bytes]:
    """Every file under `root` (but the run's bookkeeping) with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in skip}


def test_http_output_equals_a_local_run_and_resumes_on_a_fresh_machine(stages, images, home, server, tmp_path):
    reference = tmp_path / "reference"
    run_to_folder(pipeline(stages, json_files=True), [images], reference, quiet=True)
    url = f"{server.url}/runs/a"
    summary = run_to_output(pipeline(stages, json_files=True), [images], url, quiet=True)
    assert (summary.processed, summary.failed, summary.output_dir) == (5, 0, url)
    remote = server.root / "runs" / "a"
    assert tree(remote) == tree(reference)  # frames, shards, coco.json, manifest: byte for byte
    assert json.loads((remote / "summary.json").read_text())["output_dir"] == url
    # the journal never names data that is not uploaded: every segment comes after its shards and files
    puts = [p.removeprefix("/runs/a/") for p in server.puts]
    segments = [p for p in puts if p.startswith(".recognize/done/")]
    assert segments == [f".recognize/done/{i:05d}.jsonl" for i in range(len(segments))] and len(segments) >= 3
    for segment in segments:
        for line in (remote / segment).read_text().splitlines():
            record = json.loads(line)
            for data in [*record["files"], *record["appended"]]:
                assert puts.index(data) < puts.index(segment), (data, segment)
    shutil.rmtree(home)  # another machine: nothing staged
    again = run_to_output(pipeline(stages, json_files=True), [images], url, quiet=True)
    assert (again.processed, again.skipped) == (0, 5)
    assert tree(remote) == tree(reference)


def test_the_summary_counts_the_remote_work_around_the_run(stages, images, home, server, monkeypatch):
    """Opening the URL and reading its journal before the run, and uploading the outputs after it, are
    in the run's seconds (`prepare` and `finish`) and between its `started` and `finished`, in the
    summary returned and in the one uploaded (until 2026-12-03 they were in neither)."""
    import time
    from datetime import datetime

    from recognize import remote_output

    opened, download, finished = (remote_output.RemoteFolder.__init__, remote_output.RemoteJournal.download,
                                  remote_output._finished_outputs)

    def slowly(function, seconds):
        def slow(*args, **kwargs):
            time.sleep(seconds)
            return function(*args, **kwargs)
        return slow

    monkeypatch.setattr(remote_output.RemoteFolder, "__init__", slowly(opened, 0.3))  # a backend's imports
    monkeypatch.setattr(remote_output.RemoteJournal, "download", slowly(download, 1.2))  # a large journal
    monkeypatch.setattr(remote_output, "_finished_outputs", slowly(finished, 1.0))  # many outputs to upload
    url = f"{server.url}/runs/timed"
    summary = run_to_output(pipeline(stages), [images], url, quiet=True)
    uploaded = json.loads((server.root / "runs" / "timed" / "summary.json").read_text())
    for data in (summary.to_dict(), uploaded):
        wall = data["wall"]
        assert wall["prepare"] >= 1.5 and wall["finish"] >= 1.0
        assert sum(wall.values()) == pytest.approx(data["seconds"], abs=0.01)
        assert wall["prepare"] <= data["cold_start"] <= data["seconds"] - wall["stages"] - wall["finish"] + 0.01
        # stamped to the second: 2.5 s of it outside these stamps could not pass
        between = (datetime.fromisoformat(data["finished"]) - datetime.fromisoformat(data["started"])).total_seconds()
        assert abs(between - data["seconds"]) <= 1.0


def test_an_interrupted_run_keeps_what_it_finished_and_another_machine_finishes_it(stages, images, home, server,
                                                                                   tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    run_to_folder(pipeline(stages), [images], reference, quiet=True)
    url = f"{server.url}/run"
    monkeypatch.setenv("TEST_INTERRUPT_ON", NAMES[3])
    with pytest.raises(KeyboardInterrupt):
        run_to_output(pipeline(stages), [images], url, quiet=True)
    remote = server.root / "run"
    kept = [json.loads(line)["name"] for p in sorted((remote / ".recognize" / "done").iterdir())
            for line in p.read_text().splitlines()]
    assert kept == NAMES[:3]  # the open shard went up too: the run stopped, nothing more goes into it
    monkeypatch.delenv("TEST_INTERRUPT_ON")
    shutil.rmtree(home)
    resumed = run_to_output(pipeline(stages), [images], url, quiet=True)
    assert (resumed.processed, resumed.skipped) == (2, 3)
    assert json.loads((remote / "coco.json").read_text()) == json.loads((reference / "coco.json").read_text())
    assert [f.to_json() for f in read_shards(remote)] == [f.to_json() for f in read_shards(reference)]


@pytest.mark.parametrize("segment_written", [False, True], ids=["before-the-segment", "after-the-segment"])
def test_a_ctrl_c_during_the_last_sync_still_leaves_every_finished_image_remote(stages, images, home, server,
                                                                               tmp_path, monkeypatch,
                                                                               segment_written):
    """Ctrl-C while the run's last journal segment goes up (before it reached the server, or after it
    did but before the run knew): what is kept on the way out writes that segment (again, under its
    name), so every finished image is remote once and a fresh machine redoes nothing."""
    reference = tmp_path / "reference"
    run_to_folder(pipeline(stages), [images], reference, quiet=True)
    url = f"{server.url}/run"
    real_sync, real_write = JournalSync.sync, RemoteFolder.write
    last_sync = {"armed": False, "interrupted": 0}

    def last_sync_interrupted(self, *, final=False):
        last_sync["armed"] = final and not last_sync["interrupted"]
        real_sync(self, final=final)

    def written_then_interrupted(self, relative, data, scratch):
        if segment_written or not last_sync["armed"]:
            real_write(self, relative, data, scratch)
        if last_sync["armed"]:
            last_sync["armed"], last_sync["interrupted"] = False, last_sync["interrupted"] + 1
            raise KeyboardInterrupt

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(JournalSync, "sync", last_sync_interrupted)
        patched.setattr(RemoteFolder, "write", written_then_interrupted)
        run_to_output(pipeline(stages), [images], url, quiet=True)
    assert last_sync["interrupted"] == 1
    remote = server.root / "run"
    kept = [json.loads(line)["name"] for p in sorted((remote / ".recognize" / "done").iterdir())
            for line in p.read_text().splitlines()]
    assert kept == NAMES  # each once: the interrupted segment was written again, not appended twice
    shutil.rmtree(home)
    resumed = run_to_output(pipeline(stages), [images], url, quiet=True)
    assert (resumed.processed, resumed.skipped) == (0, 5)
    assert json.loads((remote / "coco.json").read_text()) == json.loads((reference / "coco.json").read_text())
    assert [f.to_json() for f in read_shards(remote)] == [f.to_json() for f in read_shards(reference)]


def test_a_resume_on_the_same_machine_reuses_its_staging_and_redoes_what_was_never_uploaded(stages, images, home,
                                                                                           server, monkeypatch):
    url = f"{server.url}/run"
    monkeypatch.setenv("TEST_INTERRUPT_ON", NAMES[3])
    real_sync = JournalSync.sync

    def killed_before_the_last_sync(self, *, final=False):
        if not final:
            real_sync(self)

    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(JournalSync, "sync", killed_before_the_last_sync)
        run_to_output(pipeline(stages), [images], url, quiet=True)
    remote = server.root / "run"
    uploaded = [json.loads(line)["name"] for line in (remote / ".recognize/done/00000.jsonl").read_text().splitlines()]
    assert uploaded == NAMES[:2] and not (remote / ".recognize/done/00001.jsonl").exists()  # im2's shard was open
    monkeypatch.delenv("TEST_INTERRUPT_ON")
    gets_before = len(server.puts)
    resumed = run_to_output(pipeline(stages), [images], url, quiet=True)
    assert (resumed.processed, resumed.skipped) == (3, 2)  # im2 was staged here but never uploaded: redone
    assert not any(p.endswith("part-00001.jsonl") for p in server.puts[gets_before:])  # its stale shard stays local
    assert [f.name for f in read_shards(remote)] == NAMES


def test_another_recipe_is_refused_and_overwrite_removes_the_earlier_runs_files(stages, images, home, s3_bucket):
    url = f"{s3_bucket.url}/run"
    first = pipeline(stages)
    first.outputs.append(plugins.get_stage("yolo")())  # its own folder (labels/), written when the run ends
    run_to_output(first, [images], url, quiet=True)
    for name in ("coco.json", "shards/part-00000.jsonl", "labels/im0.txt", "classes.txt"):
        assert s3_bucket.exists(f"{url}/{name}"), name
    other = Pipeline([stages.Brightness()], [plugins.get_stage("json")()], batch_size=2)
    with pytest.raises(InputError, match=f"{url} holds results of a different recipe"):
        run_to_output(other, [images], url, quiet=True)
    shutil.rmtree(home)  # refused from the remote manifest alone
    with pytest.raises(InputError, match="--overwrite"):
        run_to_output(other, [images], url, quiet=True)
    summary = run_to_output(other, [images], url, quiet=True, overwrite=True)
    assert summary.processed == 5
    s3_bucket.invalidate_cache()
    left = sorted(p.removeprefix(url.removeprefix("s3://") + "/") for p in s3_bucket.find(url))
    assert left == sorted([*(f".recognize/done/{i:05d}.jsonl" for i in range(5)),
                           *(f"frames/{name}.json" for name in NAMES), "manifest.json", "summary.json"])
    records = [json.loads(s3_bucket.cat_file(f"{url}/.recognize/done/{i:05d}.jsonl")) for i in range(5)]
    assert {r["name"] for r in records} == set(NAMES) and not any("appended" in r for r in records)


def test_a_folder_with_foreign_files_and_no_manifest_is_refused(stages, images, home, s3_bucket):
    s3_bucket.pipe_file("recognize-test/photos/holiday.jpg", b"not ours")
    with pytest.raises(InputError, match="is not empty and has no readable manifest.json"):
        run_to_output(pipeline(stages), [images], f"{s3_bucket.url}/photos", quiet=True)


def test_http_cannot_delete_so_overwrite_says_so(stages, images, home, server):
    url = f"{server.url}/run"
    run_to_output(pipeline(stages), [images], url, quiet=True)
    with pytest.raises(InputError, match="cannot delete files"):
        run_to_output(pipeline(stages), [images], url, quiet=True, overwrite=True)


def test_unknown_schemes_missing_backends_and_dead_servers_are_one_line_input_errors(stages, images, home):
    with pytest.raises(InputError, match="no fsspec filesystem for nosuch://"):
        run_to_output(pipeline(stages), [images], "nosuch://bucket/run", quiet=True)
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match=r"needs the gcsfs package \(pip install gcsfs\)"):
            run_to_output(pipeline(stages), [images], "gs://bucket/run", quiet=True)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(InputError, match=f"http://127.0.0.1:{port}/run/manifest.json: cannot read") as caught:
        run_to_output(pipeline(stages), [images], f"http://127.0.0.1:{port}/run", quiet=True)
    assert "\n" not in str(caught.value)
    assert not any(home.rglob("*.png.json"))  # refused before any image


def test_an_upload_the_server_refuses_stops_the_run_in_one_line(stages, images, home, server):
    (images / "refuse.png").write_bytes((images / NAMES[0]).read_bytes())
    url = f"{server.url}/run"
    run = Pipeline([stages.Brightness()], [plugins.get_stage("json")()], batch_size=1)
    with pytest.raises(RecognizeError, match=r"frames/refuse\.png\.json: cannot upload \(ClientResponseError: 403"
                       ) as caught:
        run_to_output(run, [images], url, quiet=True)
    assert type(caught.value) is RecognizeError and "\n" not in str(caught.value)
    named = [json.loads(line)["name"] for p in (server.root / "run" / ".recognize" / "done").iterdir()
             for line in p.read_text().splitlines()]
    assert "refuse.png" not in named and set(named) <= set(NAMES)  # the journal names only uploaded files


def test_a_url_the_server_will_not_store_is_refused_before_any_image(stages, images, home, server):
    with pytest.raises(InputError, match=r"/refused/run/manifest.json: cannot upload \(ClientResponseError: 403"):
        run_to_output(pipeline(stages), [images], f"{server.url}/refused/run", quiet=True)
    assert not (server.root / "refused").exists() and not list(home.rglob("part-*.jsonl"))


def test_a_run_refused_for_its_inputs_leaves_nothing_remote(stages, images, home, server, tmp_path):
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"file": str(images / NAMES[0])}) + "\n")
    with pytest.raises(InputError, match="row 1 has no path, url, source column"):
        run_to_output(pipeline(stages), [tmp_path / "manifest.jsonl"], f"{server.url}/run", quiet=True)
    with pytest.raises(InputError, match="no such file or folder"):
        run_to_output(pipeline(stages), [images / "missing.png"], f"{server.url}/run", quiet=True)
    assert server.puts == [] and not (server.root / "run").exists()


def test_two_runs_on_one_machine_cannot_share_a_staging_folder(stages, images, home, server):
    import fcntl

    from recognize.remote_output import staging_folder

    url = f"{server.url}/run"
    staging = staging_folder(url)
    staging.parent.mkdir(parents=True)
    with open(staging.with_name(f"{staging.name}.lock"), "a") as held:  # what a running run holds
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(InputError, match=f"another recognize run on this machine is writing {url}"):
            run_to_output(pipeline(stages), [images], url, quiet=True)
    assert run_to_output(pipeline(stages), [images], url, quiet=True).processed == 5


def test_a_bad_sync_interval_is_a_setting_error(stages, images, home, server, monkeypatch):
    from recognize.errors import SettingError

    monkeypatch.setenv("RECOGNIZE_SYNC_SECONDS", "soon")
    with pytest.raises(SettingError, match="RECOGNIZE_SYNC_SECONDS=soon"):
        run_to_output(pipeline(stages), [images], f"{server.url}/run", quiet=True)


@pytest.mark.slow
def test_the_ray_engine_writes_to_a_url_like_the_local_one(stages, images, home, server, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    from clihelp import SUPPORT

    from recognize.engines.ray_engine import RayEngine

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RECOGNIZE_PLUGINS": "teststages", "PYTHONPATH": os.environ["PYTHONPATH"]}})
    try:
        def run():
            return Pipeline([stages.Brightness(), stages.CenterBox(), stages.CountDataset()],
                            [plugins.get_stage("shards")(frames_per_shard=2), plugins.get_stage("coco")()],
                            batch_size=2)

        run_to_folder(run(), [images], tmp_path / "local", quiet=True)
        summary = run_to_output(run(), [images], f"{server.url}/ray", quiet=True, engine=RayEngine(num_workers=2))
    finally:
        ray.shutdown()
    assert (summary.processed, summary.engine) == (5, "ray")
    remote = server.root / "ray"
    assert json.loads((remote / "coco.json").read_text()) == json.loads((tmp_path / "local" / "coco.json").read_text())
    assert [f.to_json() for f in read_shards(remote)] == [f.to_json() for f in read_shards(tmp_path / "local")]


def test_parquet_shards_go_up_closed_also_when_a_run_is_interrupted(stages, images, home, server, tmp_path,
                                                                    monkeypatch):
    def parquet_pipeline():
        outputs = [plugins.get_stage("shards")(frames_per_shard=2, format="parquet"), plugins.get_stage("coco")()]
        return Pipeline([stages.Brightness(), stages.CenterBox(), stages.BoxMask(), InterruptOn()], outputs,
                        batch_size=1)

    reference = tmp_path / "reference"
    run_to_folder(parquet_pipeline(), [images], reference, quiet=True)
    url = f"{server.url}/run"
    monkeypatch.setenv("TEST_INTERRUPT_ON", NAMES[3])
    with pytest.raises(KeyboardInterrupt):
        run_to_output(parquet_pipeline(), [images], url, quiet=True)
    remote = server.root / "run"
    assert [f.name for f in read_shards(remote)] == NAMES[:3]  # the open shard was closed (renamed) and went up
    monkeypatch.delenv("TEST_INTERRUPT_ON")
    shutil.rmtree(home)
    resumed = run_to_output(parquet_pipeline(), [images], url, quiet=True)
    assert (resumed.processed, resumed.skipped) == (2, 3)
    assert json.loads((remote / "coco.json").read_text()) == json.loads((reference / "coco.json").read_text())
    assert [f.to_json() for f in read_shards(remote)] == [f.to_json() for f in read_shards(reference)]
