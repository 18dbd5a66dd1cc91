"""`recognize run ... -o URL` through the CLI in a subprocess: a run SIGKILLed mid-way resumes from the
remote journal on another machine and ends with the outputs of an uninterrupted run; S3 (moto on
loopback) refuses another recipe and takes --overwrite; a file:// URL is a plain folder."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from clihelp import cli_env
from PIL import Image
from put_server import put_server

from recognize.outputs.shards import read_shards

pytestmark = pytest.mark.subprocess

NAMES = [f"im{i}.png" for i in range(5)]
RECIPE = """\
recipe: 1
name: remote
stages:
  - use: brightness
  - use: center_box
  - use: box_mask
  - use: die_on
outputs:
  - use: shards
    with: {frames_per_shard: 2}
  - use: coco
settings: {batch_size: 1}
"""


def recognize(*args, **env):
    return subprocess.run([sys.executable, "-m", "recognize", *map(str, args)], capture_output=True, text=True,
                          env=cli_env(**env), timeout=600, check=False)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, name in enumerate(NAMES):
        Image.fromarray(np.full((20 + i, 30, 3), 40 * i, np.uint8)).save(folder / name)
    return folder


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "remote.yaml"
    path.write_text(RECIPE)
    return path


def test_help_names_url_outputs():
    result = recognize("run", "--help")
    assert result.returncode == 0 and "fsspec URL" in result.stdout and "s3fs" in result.stdout


def test_a_file_url_is_a_plain_folder(images, recipe, tmp_path):
    out = tmp_path / "out"
    result = recognize("run", recipe, images, "-o", f"file://{out}", "-q", RECOGNIZE_HOME=str(tmp_path / "home"))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["counts"]["processed"] == 5
    assert sorted(f.name for f in read_shards(out)) == NAMES
    assert not (tmp_path / "home" / "outputs").exists()  # nothing staged: written in place


def test_a_missing_backend_package_is_named(images, recipe, tmp_path):
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        result = recognize("run", recipe, images, "-o", "gs://bucket/run", RECOGNIZE_HOME=str(tmp_path / "home"))
        assert result.returncode == 2 and "pip install gcsfs" in result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    else:
        pytest.skip("gcsfs is installed")


@pytest.mark.slow
def test_a_killed_run_resumes_from_the_remote_journal_on_another_machine(images, recipe, tmp_path):
    reference = tmp_path / "reference"
    assert recognize("run", recipe, images, "-o", reference, "-q").returncode == 0
    root = tmp_path / "server"
    root.mkdir()
    with put_server(root) as server:
        url = f"{server.url}/runs/remote"
        # each image written before the next computes (RECOGNIZE_BACKGROUND_WRITE=0), so what the dead run
        # uploaded is known exactly (`tests/outputs/test_shards.py` kills a run whose writer thread is behind)
        killed = recognize("run", recipe, images, "-o", url, "-q", RECOGNIZE_HOME=str(tmp_path / "machine-1"),
                           RECOGNIZE_SYNC_SECONDS="0", TEST_DIE_ON=NAMES[3], RECOGNIZE_BACKGROUND_WRITE="0")
        assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup ran
        remote = root / "runs" / "remote"
        uploaded = [json.loads(line)["name"] for p in sorted((remote / ".recognize" / "done").iterdir())
                    for line in p.read_text().splitlines()]
        assert uploaded == NAMES[:2]  # im2's line pointed into the shard that was still open
        resumed = recognize("run", recipe, images, "-o", url, RECOGNIZE_HOME=str(tmp_path / "machine-2"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"3 processed, 2 already done, 0 failed -> {url}" in resumed.stderr
    assert json.loads((remote / "coco.json").read_text()) == json.loads((reference / "coco.json").read_text())
    assert [f.to_json() for f in read_shards(remote)] == [f.to_json() for f in read_shards(reference)]


@pytest.mark.slow
def test_s3_refuses_another_recipe_and_overwrite_redoes_it(images, recipe, tmp_path, monkeypatch):
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    moto = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/recognize-cli", method="PUT")).close()
        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL": endpoint, "RECOGNIZE_HOME": str(tmp_path / "home")}
        url = "s3://recognize-cli/run"
        first = recognize("run", recipe, images, "-o", url, "-q", **env)
        assert first.returncode == 0, first.stderr
        other = recognize("run", recipe, images, "-o", url, "--set", "stages.1.with.score=0.4", **env)
        assert other.returncode == 2 and "different recipe" in other.stderr and "--overwrite" in other.stderr
        assert other.stderr.strip().count("\n") == 0 and "Traceback" not in other.stderr
        redone = recognize("run", recipe, images, "-o", url, "-q", "--set", "stages.1.with.score=0.4",
                           "--overwrite", **env)
        assert redone.returncode == 0, redone.stderr
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()
        coco = json.loads(s3fs.S3FileSystem().cat_file(f"{url}/coco.json"))
        assert {a["score"] for a in coco["annotations"]} == {0.4}
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        moto.stop()
