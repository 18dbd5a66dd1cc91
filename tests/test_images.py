import io

import numpy as np
import pytest
from PIL import Image

from recognize.errors import ImageError, InputError
from recognize.images import as_rgb_array, expand_inputs, load_image


def save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(img, tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(path).shape == (40, 20, 3)


@pytest.mark.parametrize(
    "mode,value",
    [("L", 128), ("P", 3), ("RGBA", (10, 20, 30, 255)), ("CMYK", (0, 255, 255, 0)), ("I;16", 65535), ("LA", (50, 255))],
)
def test_modes_become_rgb_uint8(tmp_path, mode, value):
    img = Image.new(mode, (8, 6), value)
    suffix = ".tif" if mode == "CMYK" else ".png"
    out = load_image(save(img, tmp_path / f"img{suffix}"))
    assert out.dtype == np.uint8 and out.shape == (6, 8, 3)
    if mode == "I;16":
        assert out.max() == 255  # scaled from 16 bit, not clipped to a constant
    if mode == "CMYK":
        assert tuple(out[0, 0]) == (255, 0, 0)


def test_transparent_pixels_composite_on_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert tuple(load_image(save(img, tmp_path / "t.png"))[0, 0]) == (255, 255, 255)


def test_truncated_and_non_images_are_one_line_errors(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(good.getvalue()[:200])
    (tmp_path / "text.jpg").write_text("hello")
    for name in ("cut.jpg", "text.jpg", "missing.jpg"):
        with pytest.raises(ImageError) as info:
            load_image(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (100, 100)), tmp_path / "big.png")
    monkeypatch.setenv("RECOGNIZE_MAX_PIXELS", "5000")
    with pytest.raises(ImageError, match="limit|bomb"):
        load_image(path)


def test_arrays_are_normalised():
    assert as_rgb_array(np.zeros((3, 4), np.uint8)).shape == (3, 4, 3)
    assert as_rgb_array(np.ones((3, 4, 4), np.float32)).max() == 255
    assert as_rgb_array(np.full((2, 2, 3), 65535, np.uint16)).max() == 255


def test_expand_inputs_folders_globs_and_names(image_folder, tmp_path):
    items = expand_inputs([image_folder])
    assert [name for _, name in items] == ["black.jpg", "sub/noise.png", "white.png"]  # sorted, recursive, images only
    again = expand_inputs([image_folder / "white.png", str(image_folder / "*.png")])
    assert [name for _, name in again] == ["white.png"]  # the same file twice is processed once
    other = tmp_path / "other"
    other.mkdir()
    save(Image.new("RGB", (4, 4)), other / "white.png")
    both = expand_inputs([image_folder / "white.png", other / "white.png"])
    assert [name for _, name in both] == ["white.png", "white-2.png"]
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([tmp_path / "nope"])
    with pytest.raises(InputError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.webp")])


def test_expand_inputs_names_are_distinct_and_safe(tmp_path):
    """Every file gets its own name: extensions kept, `\\` and `%` escaped, dot names kept."""
    folder = tmp_path / "in"
    (folder / "a").mkdir(parents=True)
    for name in ["x.jpg", "x.png", "a\\b.jpg", "a%5Cb.jpg", "..jpg", "summary.jpg", "a/b.jpg"]:
        save(Image.new("RGB", (4, 4)), folder / name, format="PNG")
    names = [name for _, name in expand_inputs([folder])]
    assert sorted(names) == ["..jpg", "a%255Cb.jpg", "a%5Cb.jpg", "a/b.jpg", "summary.jpg", "x.jpg", "x.png"]
    assert len(set(names)) == len(names)
    deep = expand_inputs([str(folder / "**" / "*.jpg")])  # a glob names files from its fixed folder
    assert "a/b.jpg" in [name for _, name in deep]


def test_expand_inputs_never_takes_the_output_folder(tmp_path):
    folder = tmp_path / "in"
    (folder / "out" / "frames").mkdir(parents=True)
    save(Image.new("RGB", (4, 4)), folder / "x.jpg")
    save(Image.new("RGB", (4, 4)), folder / "out" / "frames" / "x.jpg.annotated.jpg")
    assert [name for _, name in expand_inputs([folder], exclude=folder / "out")] == ["x.jpg"]
    assert [name for _, name in expand_inputs([str(folder / "**" / "*.jpg")], exclude=folder / "out")] == ["x.jpg"]
    with pytest.raises(InputError, match="output folder"):
        expand_inputs([folder], exclude=folder)
    with pytest.raises(InputError, match="inside the output folder"):
        expand_inputs([folder / "out" / "frames" / "x.jpg.annotated.jpg"], exclude=folder / "out")


def test_expand_inputs_refuses_empty_folders_and_non_regular_files(tmp_path):
    import os

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    with pytest.raises(InputError, match="no image file"):
        expand_inputs([empty])
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        expand_inputs([fifo])  # refused at once: opening it would block forever
    with pytest.raises(InputError, match="FIFO"):
        expand_inputs([tmp_path])
