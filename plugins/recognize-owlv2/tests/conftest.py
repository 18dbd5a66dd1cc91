from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `owl_support` (tests run with --import-mode=importlib)

from owl_support import REFERENCE, TINY_CONFIG  # noqa: E402



@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    folder = REFERENCE / "data" / "images"
    if not folder.is_dir():
        pytest.skip(f"reference photos not found at {folder}")
    return {path.stem: path for path in sorted(folder.rglob("*.jpg"))}


@pytest.fixture(scope="session")
def tiny_owlv2():
    from recognize_owlv2.model import build_owlv2

    return build_owlv2(custom=TINY_CONFIG, seed=0)
