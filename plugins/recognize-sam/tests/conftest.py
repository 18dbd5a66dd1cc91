from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `sam_support` (tests run with --import-mode=importlib)

from sam_support import REFERENCE, TINY_CONFIG  # noqa: E402


@pytest.fixture(scope="session")
def photos() -> dict[str, Path]:
    folder = REFERENCE / "data" / "images"
    if not folder.is_dir():
        pytest.skip(f"reference photos not found at {folder}")
    return {path.stem: path for path in sorted(folder.rglob("*.jpg"))}


@pytest.fixture(scope="session")
def small_photo(photos) -> Path:
    return photos["demo4"]  # 428 x 640


@pytest.fixture(scope="session")
def big_photo(photos) -> Path:
    return photos["1641173_2291260800"]  # 3216 x 4288 after its EXIF rotation


@pytest.fixture(scope="session")
def tiny_sam():
    from recognize_sam.model import SamConfig, build_sam

    return build_sam(config=SamConfig(**TINY_CONFIG), seed=0)

