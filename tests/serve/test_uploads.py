"""Decoding uploads: names that are never paths, EXIF orientation, limits, one-line reasons."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from recognize.serve.uploads import Upload, UploadProblem, clean_name, decode_image

from .conftest import png_bytes


@pytest.mark.parametrize("given, expected", [("photo.jpg", "photo.jpg"), ("../../etc/passwd", "passwd"),
                                             ("C:\\Users\\me\\cat.png", "cat.png"), ("", "image-3"),
                                             ("..", "image-3"), ("a\x00b;rm -rf.png", "a_b_rm -rf.png")])
def test_clean_name(given, expected) -> None:
    assert clean_name(given, 2) == expected


def test_decode_applies_exif_orientation() -> None:
    image = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    assert decode_image(Upload("r.jpg", buffer.getvalue()), 10_000).shape == (40, 20, 3)


def test_decode_gray_and_rgba_as_rgb() -> None:
    for mode in ("L", "RGBA", "I;16"):
        buffer = io.BytesIO()
        Image.new(mode, (8, 6)).save(buffer, "PNG")
        array = decode_image(Upload("x.png", buffer.getvalue()), 100)
        assert array.shape == (6, 8, 3) and array.dtype == np.uint8


@pytest.mark.parametrize("data, status, text", [(b"", 422, "empty"), (b"GIF89a", 422, "x.gif"),
                                                (b"hello", 422, "not an image")])
def test_decode_problems(data, status, text) -> None:
    with pytest.raises(UploadProblem) as info:
        decode_image(Upload("x.gif", data), 100)
    assert info.value.status == status and text in info.value.reason and "\n" not in info.value.reason


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(UploadProblem) as info:
        decode_image(Upload("big.png", png_bytes(size=(40, 60))), 40 * 60 - 1)
    assert info.value.status == 413 and "40" in info.value.reason
