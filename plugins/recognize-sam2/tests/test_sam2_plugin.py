"""The distribution is found the way a third-party plugin is: through the `recognize` entry point."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

from recognize import plugins
from recognize_sam2 import Sam2


def test_entry_point_is_published():
    (entry,) = [e for e in metadata.entry_points(group="recognize") if e.name == "sam2"]
    assert entry.value == "recognize_sam2.plugin" and entry.dist.name == "recognize-sam2"


def test_stage_and_model_cards_are_registered():
    plugins.reset()
    assert plugins.get_stage("sam2") is Sam2 and Sam2.kind == "segmenter"
    cards = plugins.model_cards()
    expected = {}
    for size in ("tiny", "small", "base_plus", "large"):
        expected[f"sam2.1_hiera_{size}"] = f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_{size}.pt"
        expected[f"sam2_hiera_{size}"] = f"https://dl.fbaipublicfiles.com/segment_anything_2/072824/sam2_hiera_{size}.pt"
    for name, url in expected.items():
        (file,) = cards[name].files
        assert file.url == url and file.filename == url.rsplit("/", 1)[1]
        assert cards[name].license == "Apache-2.0"
    info = next(i for i in plugins.plugin_infos() if i.name == "recognize-sam2")
    assert info.stages == ["sam2"] and sorted(info.models) == sorted(expected) and not info.builtin


@pytest.mark.subprocess
@pytest.mark.slow
def test_cli_lists_the_distribution_and_its_cards():
    listed = subprocess.run([sys.executable, "-m", "recognize", "plugins"], capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "recognize-sam2" in listed.stdout and "sam2" in listed.stdout
    models = subprocess.run(
        [sys.executable, "-m", "recognize", "models", "list"], capture_output=True, text=True, timeout=300
    )
    assert models.returncode == 0, models.stderr
    assert "sam2.1_hiera_large" in models.stdout and "sam2_hiera_tiny" in models.stdout


def test_registering_the_stage_does_not_import_torch():
    # `recognize stages` / `recognize --help` load every plugin: torch (~1 s) waits for a model load
    import subprocess
    import sys

    code = ("import sys; from recognize_sam2.plugin import register_stages; register_stages(lambda stage: None);"
            "from recognize_sam2.stage import Sam2Params; Sam2Params(config={'embed_dim': 8, 'num_heads': 1, "
            "'stages': [1, 1, 1, 1]}, weights='random'); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert result.stdout.strip() == "False"
