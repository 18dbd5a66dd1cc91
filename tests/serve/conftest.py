"""Fixtures for the server tests: recipes of the deterministic test stages, and an in-process client."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

TEST_RECIPE = {
    "recipe": 1, "name": "test", "settings": {"batch_size": 4, "device": "cpu"},
    "stages": [{"use": "brightness"}, {"use": "center_box", "with": {"score": 0.8}}, {"use": "box_mask"}],
    "outputs": [{"use": "annotated_image"}],
}


def write_recipe(folder: Path, recipe: dict, name: str = "recipe.yaml") -> Path:
    path = folder / name
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def png_bytes(value: int = 200, size: tuple[int, int] = (40, 60), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def wait_ready(client, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"server not ready: {client.get('/readyz').text}")


@pytest.fixture
def test_recipe(tmp_path, test_stages) -> Path:
    return write_recipe(tmp_path, TEST_RECIPE)


@pytest.fixture
def make_client(serve_stages):
    """make_client(recipe, **settings) -> a started TestClient (closed after the test)."""
    from fastapi.testclient import TestClient

    from recognize.serve import ServeSettings, create_app

    clients = []

    def make(recipe: Path, ready: bool = True, **settings):
        client = TestClient(create_app(recipe, ServeSettings(**settings)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        if ready:
            wait_ready(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client, test_recipe):
    return make_client(test_recipe)


@pytest.fixture
def serve_stages(test_stages):
    """Register tests/support/servestages.py for this test (and reset its switches)."""
    import servestages

    from recognize import plugins

    for event in (servestages.GATE, servestages.LOADED, servestages.LOAD_FAILS):
        event.clear()
    servestages.CALLS.clear()
    with plugins.registered(servestages, name="servestages"):
        yield servestages
        servestages.GATE.set()  # never leave a worker thread waiting
        servestages.LOADED.set()
