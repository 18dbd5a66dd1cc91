from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # for `blob_localizer` (tests run with --import-mode=importlib)


def pytest_configure(config):
    # registered here until the project registers them centrally (harmless if it already does)
    config.addinivalue_line("markers", "slow: takes more than ~10 s on a 2-core CPU")
    config.addinivalue_line("markers", "subprocess: runs the `recognize` CLI in a subprocess")


@pytest.fixture
def blob_plugin(monkeypatch):
    """The `colour_blobs` localizer, loaded the way an unpackaged plugin is (RECOGNIZE_PLUGINS)."""
    from recognize import plugins

    monkeypatch.setenv("RECOGNIZE_PLUGINS", "blob_localizer")
    plugins.reset()
    yield
    monkeypatch.delenv("RECOGNIZE_PLUGINS")
    plugins.reset()
