from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "support"
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))
sys.path.insert(0, str(SUPPORT))


@pytest.fixture
def reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture
def photos(reference) -> list[Path]:
    return sorted((reference / "data" / "images").rglob("*.jpg"))


#: The project's own plugin distributions: the suite loads these and no other installed plugin, so it
#: passes whichever third-party plugins (examples/recognize-color-tags, ...) happen to be installed.
PROJECT_PLUGINS = "recognize-grounding-dino,recognize-sam,recognize-sam2,recognize-owlv2,recognize-tiles"


@pytest.fixture(autouse=True, scope="session")
def only_project_plugins():
    from recognize import plugins

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECOGNIZE_LOAD_PLUGINS", PROJECT_PLUGINS)
        plugins.reset()
        yield
    plugins.reset()


@pytest.fixture
def test_stages():
    """Register the deterministic test stages (tests/support/teststages.py) for this test."""
    import teststages

    from recognize import plugins

    with plugins.registered(teststages, name="teststages"):
        yield teststages


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    """An empty recognize cache, offline: nothing can be downloaded by accident."""
    home = tmp_path / "recognize-home"
    monkeypatch.setenv("RECOGNIZE_HOME", str(home))
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    return home


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Three small images (one in a sub-folder) and a non-image file."""
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(np.full((40, 60, 3), 230, np.uint8)).save(folder / "white.png")
    Image.fromarray(np.full((50, 30, 3), 20, np.uint8)).save(folder / "black.jpg")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "sub" / "noise.png")
    (folder / "notes.txt").write_text("not an image")
    return folder
