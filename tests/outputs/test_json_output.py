"""The `json` output: the Frame schema file per image, atomic, read back by a resumed run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from recognize.errors import RecognizeError
from recognize.frame import Frame, mask_to_rle, rle_to_mask
from recognize.outputs.json_output import JsonOutput, read_frame
from recognize.outputs.paths import output_name


def test_writes_frame_json_under_its_name(tmp_path: Path, frame_factory) -> None:
    frame = frame_factory("sub/img")
    stage = JsonOutput()
    (path,) = stage.files(frame, tmp_path)
    assert path == tmp_path / "frames" / "sub" / "img.json" and not path.exists()
    stage.write(frame, tmp_path)
    assert path.read_text(encoding="utf-8") == frame.to_json() + "\n"
    back = read_frame(path)
    assert back.tag_names == frame.tag_names and back.caption == frame.caption
    assert (back.regions[0].mask == frame.regions[0].mask).all()
    assert back._image is None  # a frame read back has no pixels until asked for
    stage.finish([frame], tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["frames", "frames/sub", "frames/sub/img.json"]


def test_output_file_is_readable_like_a_plain_file(tmp_path: Path, frame_factory) -> None:
    JsonOutput().write(frame_factory("a"), tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "frames" / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, frame_factory, monkeypatch) -> None:
    frame = frame_factory("a")
    stage = JsonOutput()
    stage.write(frame, tmp_path)
    before = (tmp_path / "frames" / "a.json").read_bytes()
    frame.caption = "changed"

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        stage.write(frame, tmp_path)
    assert (tmp_path / "frames" / "a.json").read_bytes() == before
    assert [p.name for p in (tmp_path / "frames").iterdir()] == ["a.json"]


def test_name_falls_back_to_source_name_and_stays_inside_out() -> None:
    assert output_name(Frame(source="/x/y/photo.final.jpg")) == "photo.final.jpg"
    assert output_name(Frame(source="/x/y/a\\b%.jpg")) == "a%5Cb%25.jpg"  # escaped, distinct from a/b.jpg
    assert output_name(Frame(source="/x/y/..jpg")) == "..jpg"
    with pytest.raises(RecognizeError, match="inside the output folder"):
        output_name(Frame(source="a.jpg", name="../escape"))
    with pytest.raises(RecognizeError, match="inside the output folder"):
        output_name(Frame(source="a.jpg", name="/abs/path"))
    with pytest.raises(RecognizeError, match="inside the output folder"):
        output_name(Frame(source="a.jpg", name="a/../../b"))
    with pytest.raises(RecognizeError, match="frame.name"):
        output_name(Frame(source="<array>"))


def test_indent_param_and_unknown_params(tmp_path: Path, frame_factory) -> None:
    JsonOutput(indent=None).write(frame_factory("a"), tmp_path)
    assert (tmp_path / "frames" / "a.json").read_text().count("\n") == 1
    with pytest.raises(ValueError, match="intend"):
        JsonOutput(intend=2)


def test_read_frame_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"source": 1, "regions": "x"}')
    with pytest.raises(RecognizeError) as info:
        read_frame(bad)
    assert "\n" not in str(info.value) and "bad.json" in str(info.value)
    with pytest.raises(RecognizeError, match="cannot read"):
        read_frame(tmp_path / "missing.json")


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (60, 80), (301, 173)])
def test_mask_rle_is_pycocotools_own(shape: tuple[int, int]) -> None:
    """`mask_to_rle` hands pycocotools a column-major copy made by OpenCV: the same RLE as numpy's."""
    rng = np.random.default_rng(shape[0])
    for mask in (rng.random(shape) < 0.3, np.ones(shape, bool), np.zeros(shape, bool),
                 (rng.random((shape[0], 2 * shape[1])) < 0.5)[:, ::2]):  # a strided view too
        expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle = mask_to_rle(mask)
        assert rle == {"size": list(shape), "counts": expected["counts"].decode("ascii")}
        np.testing.assert_array_equal(rle_to_mask(rle), mask)
    as_uint8 = (rng.random(shape) < 0.5).astype(np.uint8)  # not boolean: numpy's copy, as before
    assert mask_to_rle(as_uint8)["counts"] == mask_utils.encode(np.asfortranarray(as_uint8))["counts"].decode()
