from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `sam2_support` (tests run with --import-mode=importlib)

from sam2_support import REFERENCE, TINY_CONFIG  # noqa: E402


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
def tiny_sam2():
    from recognize_sam2.model import Sam2Config, build_sam2

    return build_sam2(config=Sam2Config(**TINY_CONFIG), seed=0)
