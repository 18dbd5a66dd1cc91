"""Decoding limits: the bomb message quotes the limit in force, bad settings are one line, and the
limit is thread-safe (Pillow's global is never set and restored per call)."""

import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from recognize import images
from recognize.errors import ImageError, SettingError
from recognize.images import load_image, max_pixels


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width`x`height` and whose data is one empty IDAT: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("limit", ["5000", "1_000"])
def test_bomb_message_quotes_the_limit_in_force(tmp_path, monkeypatch, limit):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setenv("RECOGNIZE_MAX_PIXELS", limit)
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert f"100x100 pixels is more than the limit of {int(limit.replace('_', ''))} pixels (RECOGNIZE_MAX_PIXELS)" in message


def test_header_far_above_pillows_own_limit_quotes_ours(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(60_000, 60_000))  # 3.6 GP: Pillow itself refuses it at open
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert f"limit of {images.DEFAULT_MAX_PIXELS} pixels" in str(info.value)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setenv("RECOGNIZE_MAX_PIXELS", "4000000000")  # raised above Pillow's: ours still decides
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1.5e6"])
def test_bad_max_pixels_setting_is_one_line(monkeypatch, value):
    monkeypatch.setenv("RECOGNIZE_MAX_PIXELS", value)
    with pytest.raises(SettingError, match=rf"RECOGNIZE_MAX_PIXELS='{value}': expected a positive whole number"):
        max_pixels()


def test_pillow_global_is_left_alone_under_threads(tmp_path, monkeypatch):
    """Many threads decode at once while another watches Pillow's global: it never changes, and
    every image gets the same verdict it would get alone."""
    small = tmp_path / "small.png"
    big = tmp_path / "big.png"
    Image.new("RGB", (20, 20), (9, 9, 9)).save(small)
    Image.new("RGB", (90, 90)).save(big)
    monkeypatch.setenv("RECOGNIZE_MAX_PIXELS", "4000")
    sentinel = 123_456_789
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", sentinel)
    seen: set = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.add(Image.MAX_IMAGE_PIXELS)

    def decode(i: int) -> str:
        path = big if i % 2 else small
        try:
            load_image(path)
            return "ok"
        except ImageError:
            return "refused"

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            verdicts = list(pool.map(decode, range(400)))
    finally:
        stop.set()
        watcher.join()
    assert verdicts == ["refused" if i % 2 else "ok" for i in range(400)]
    assert seen == {sentinel} and Image.MAX_IMAGE_PIXELS == sentinel


def test_a_limit_above_pillows_raises_its_global_once_and_never_lowers_it(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    images._allow_in_pillow(10_000)
    assert Image.MAX_IMAGE_PIXELS * 2 >= 10_000
    raised = Image.MAX_IMAGE_PIXELS
    images._allow_in_pillow(500)
    assert Image.MAX_IMAGE_PIXELS == raised


@pytest.mark.parametrize(
    "name,payload",
    [
        ("zero.png", b""),
        ("magic.png", b"GIF89a" + b"\x00" * 40),
        ("cut.png", None),
        ("dims.png", png_header_only(0, 0)),
    ],
)
def test_broken_files_are_image_errors(tmp_path, name, payload):
    path = tmp_path / name
    if payload is None:
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        payload = path.read_bytes()[:300]
    path.write_bytes(payload)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
