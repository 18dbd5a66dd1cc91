from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from parity import FIXTURES  # noqa: E402 - tests/support is on sys.path (tests/conftest.py)


def fixture_folder(name: str) -> Path:
    folder = FIXTURES / name
    if not (folder / "config.json").is_file():
        pytest.skip(f"fixture folder {folder} not found")
    return folder


@pytest.fixture(scope="session")
def ram_plus_fixture() -> Path:
    return fixture_folder("ram_plus")


@pytest.fixture(scope="session")
def ram_fixture() -> Path:
    return fixture_folder("ram")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> tuple[str, Path]:
    """A tiny randomly initialised open_clip model (512-d output, like ViT-B/16), registered under a
    config name, with its weights saved to a file: (model name, weights path)."""
    import open_clip

    folder = tmp_path_factory.mktemp("tiny-clip")
    name = "recognize-test-tiny-clip"
    config = {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / f"{name}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    weights = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), weights)
    return name, weights


@pytest.fixture
def small_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), rng.integers(0, 256, (80, 40, 3), dtype=np.uint8),
            np.full((30, 30, 3), 200, np.uint8)]
