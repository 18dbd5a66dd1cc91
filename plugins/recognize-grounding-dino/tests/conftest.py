from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", HERE.parents[2].parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    images = sorted((REFERENCE / "data" / "images").rglob("*.jpg"))
    if not images:
        pytest.skip(f"reference photos not found under {REFERENCE}")
    return images


@pytest.fixture(scope="session")
def ram_tags() -> list[tuple[str, str]]:
    """(English, Chinese) RAM tag names from the reference data."""
    folder = REFERENCE / "data" / "ram" / "data"
    if not folder.is_dir():
        pytest.skip(f"reference tag lists not found under {folder}")
    english = (folder / "ram_tag_list.txt").read_text(encoding="utf-8").splitlines()
    chinese = (folder / "ram_tag_list_chinese.txt").read_text(encoding="utf-8").splitlines()
    return list(zip(english, chinese))


@pytest.fixture(scope="session")
def vocab(tmp_path_factory) -> Path:
    from gd_support import make_vocab

    return make_vocab(tmp_path_factory.mktemp("vocab"))


@pytest.fixture(scope="session")
def tokenizer(vocab):
    from recognize_grounding_dino.model import load_tokenizer

    return load_tokenizer(vocab)


@pytest.fixture(scope="session")
def tiny(tokenizer) -> dict:
    from gd_support import tiny_config

    return tiny_config(len(tokenizer))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny) -> Path:
    """A seeded random tiny model saved in transformers' key layout (as a .safetensors file)."""
    from gd_support import randomize_
    from safetensors.torch import save_model

    from recognize_grounding_dino.model import build_config, build_model

    model = randomize_(build_model(build_config("swint_ogc", tiny)), seed=0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_model(model, str(path))
    return path
