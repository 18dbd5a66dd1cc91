"""`recognize models list | download | path` through click, and once through the real CLI."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading

import pytest
from click.testing import CliRunner

from recognize import Stage, StageParams, hookimpl, hub, plugins
from recognize.commands.models import models
from recognize.hub import ModelCard, ModelFile

PAYLOAD = b"tiny weights " * 1000


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # the server's log would land in the CLI's stderr
        pass


@pytest.fixture
def served(tmp_path):
    """A plain static file server on 127.0.0.1 with one file, `weights.bin`."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "weights.bin").write_bytes(PAYLOAD)
    handler = functools.partial(_QuietHandler, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def tiny_card(served, tmp_path, monkeypatch):
    """Register a `tiny-test` card (served locally) through the plugin hook, as a plugin would."""
    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RECOGNIZE_OFFLINE", raising=False)
    card = ModelCard(
        "tiny-test",
        (
            ModelFile("weights.bin", f"{served}/weights.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(),
                      size=len(PAYLOAD)),
        ),
        description="test card",
    )
    broken = ModelCard("broken-test", (ModelFile("gone.bin", f"{served}/gone.bin"),))

    class Plugin:
        @hookimpl
        def register_models(self, register):
            register(card)
            register(broken)

        @hookimpl
        def register_stages(self, register):
            register(TinyWeights)

    with plugins.registered(Plugin(), name="tiny-test-models"):
        yield card


class TinyWeights(Stage):
    """Needs `weights.bin` of the tiny-test card, unless `weights` names a local file."""

    name = "tiny_weights"
    kind = "filter"

    class Params(StageParams):
        weights: str | None = None

    def model_files(self) -> list[hub.FileRef]:
        return [] if self.params.weights else [hub.FileRef("tiny-test", "weights.bin")]

    def process(self, frames):
        return frames


def run(*args: str):
    return CliRunner().invoke(models, list(args))


def test_list_shows_cards_and_cache_state(tiny_card):
    result = run("list")
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "missing" in lines["tiny-test"] and "12.7 KiB" in lines["tiny-test"]
    assert "ram-tag-lists" in lines and "ram_plus_swin_large_14m" in lines

    target = hub.file_path(tiny_card, "weights.bin")
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    lines = {line.split()[0]: line for line in run("list").stdout.splitlines()}
    assert lines["tiny-test"].rstrip().endswith("present")


def test_list_json(tiny_card):
    result = run("list", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    cards = {c["name"]: c for c in data["models"]}
    [entry] = cards["tiny-test"]["files"]
    assert entry["status"] == "missing" and entry["size"] == len(PAYLOAD)
    assert entry["path"] == str(hub.file_path("tiny-test", "weights.bin"))
    assert [f["filename"] for f in cards["ram-tag-lists"]["files"]][0] == "ram_tag_list.txt"


def test_download_then_path(tiny_card):
    result = run("download", "tiny-test")
    assert result.exit_code == 0, result.output
    target = hub.file_path(tiny_card, "weights.bin")
    assert result.stdout.strip() == str(target)
    assert target.read_bytes() == PAYLOAD
    assert "weights.bin" in result.stderr  # the progress bar

    for args in (("path", "tiny-test"), ("path", "tiny-test", "weights.bin")):
        result = run(*args)
        assert result.exit_code == 0 and result.stdout.strip() == str(target)


def test_download_failure_is_one_line_exit_3(tiny_card):
    result = run("download", "--no-progress", "broken-test")
    assert result.exit_code == 3
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot download gone.bin") and "HTTP 404" in line


def test_download_unknown_name_exit_2(tiny_card):
    result = run("download", "nope")
    assert result.exit_code == 2
    assert "unknown model 'nope'" in result.stderr and "tiny-test" in result.stderr


def test_path_missing_is_one_line_exit_3(tiny_card):
    result = run("path", "tiny-test")
    assert result.exit_code == 3 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert str(hub.file_path(tiny_card, "weights.bin")) in line and "recognize models download tiny-test" in line
    result = run("path", "tiny-test", "other.bin")
    assert result.exit_code == 3 and "has no file 'other.bin'" in result.stderr


def test_real_cli_models_list(tmp_path):
    env = {**os.environ, "RECOGNIZE_HOME": str(tmp_path / "home"), "RECOGNIZE_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "recognize", "models", "list"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ram-tag-lists" in done.stdout and str(tmp_path / "home" / "models") in done.stdout


def test_real_cli_models_path_missing(tmp_path, monkeypatch):
    from recognize.cli import build_cli

    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    result = CliRunner().invoke(build_cli(), ["models", "path", "bert-base-uncased-vocab"])
    assert result.exit_code == 3
    [line] = result.stderr.splitlines()
    assert "vocab.txt" in line and str(tmp_path / "home" / "models" / "bert-base-uncased-vocab") in line


#: what recipes/tag.yaml (RAM++) and recipes/tag_ground_segment.yaml need from the hub
RAM_FILES = ("ram_plus_swin_large_14m.pth", "ram_tag_list.txt", "ram_tag_list_chinese.txt", "ram_tag_list_threshold.txt")
RECIPE_FILES = (*RAM_FILES, "groundingdino_swint_ogc.pth", "vocab.txt", "sam_vit_h_4b8939.pth")


def test_download_recipe_fetches_what_its_stages_need(tiny_card, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("recipe: 1\nstages:\n  - use: tiny_weights\n")
    result = run("download", "--no-progress", "--recipe", str(recipe))
    assert result.exit_code == 0, result.output
    target = hub.file_path(tiny_card, "weights.bin")
    assert result.stdout.strip() == str(target) and target.read_bytes() == PAYLOAD

    local = tmp_path / "local.yaml"
    local.write_text(f"recipe: 1\nstages:\n  - use: tiny_weights\n    with: {{weights: {target}}}\n")
    result = run("download", "--recipe", str(local))
    assert result.exit_code == 0 and result.stdout == ""  # a local file: nothing to fetch


def test_download_needs_a_name_or_a_recipe(tiny_card):
    result = run("download")
    assert result.exit_code == 2 and "--recipe" in result.stderr


def test_download_recipe_offline_names_every_missing_file(tmp_path, monkeypatch):
    from recognize.cli import build_cli

    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    result = CliRunner().invoke(build_cli(), ["models", "download", "--recipe", "recipes/tag_ground_segment.yaml"])
    assert result.exit_code == 3
    [line] = result.stderr.splitlines()
    for filename in RECIPE_FILES:
        assert filename in line


@pytest.mark.subprocess
def test_offline_run_names_every_missing_file_at_once(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    env = {**os.environ, "RECOGNIZE_HOME": str(tmp_path / "home"), "RECOGNIZE_OFFLINE": "1"}
    for recipe, files in (("recipes/tag.yaml", RAM_FILES), ("recipes/tag_ground_segment.yaml", RECIPE_FILES)):
        out = tmp_path / recipe.replace("/", "_")
        done = subprocess.run([sys.executable, "-m", "recognize", "run", recipe, str(tmp_path / "img.png"),
                               "-o", str(out), "-q"], env=env, capture_output=True, text=True, timeout=300,
                              check=False)
        assert done.returncode == 3, done.stderr
        [line] = done.stderr.splitlines()[-1:]
        assert f"{len(files)} model files missing and RECOGNIZE_OFFLINE=1" in line
        for filename in files:
            assert filename in line
        assert str(tmp_path / "home" / "models") in line
