from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for `blob_localizer` (tests run with --import-mode=importlib)



@pytest.fixture
def blob_plugin(monkeypatch):
    """The `colour_blobs` localizer, loaded the way an unpackaged plugin is (RECOGNIZE_PLUGINS)."""
    from recognize import plugins

    monkeypatch.setenv("RECOGNIZE_PLUGINS", "blob_localizer")
    plugins.reset()
    yield
    monkeypatch.delenv("RECOGNIZE_PLUGINS")
    plugins.reset()
