"""Where an output stage puts a frame's files (`OUT/<name><suffix>`, never outside OUT), and its size.

`frame.name` is the output name chosen by the runner (it may hold sub-folders, `sub/img`);
frames built in Python often have none, so the source's stem stands in.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from recognize.errors import RecognizeError
from recognize.frame import Frame


def output_name(frame: Frame) -> str:
    """The frame's output name (relative, POSIX, no suffix); refuses names that leave OUT."""
    name = frame.name if frame.name else Path(frame.source).stem
    if not name or name.startswith("<"):
        raise RecognizeError(f"frame from {frame.source!r} has no output name: set frame.name")
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise RecognizeError(f"output name {name!r} must be a relative path inside the output folder")
    return pure.as_posix()


def output_path(frame: Frame, out_dir: str | Path, suffix: str) -> Path:
    """`out_dir/<name><suffix>`, e.g. suffix `.json` or `.annotated.jpg`."""
    return Path(out_dir) / (output_name(frame) + suffix)


def dataset_file_name(frame: Frame, image_root: str | os.PathLike[str] | None) -> str:
    """How a dataset file (COCO, tags JSONL) names the image: its path relative to `image_root` when
    set (so `image_root/<name>` opens it), else the output name plus the source's suffix."""
    if image_root is not None:
        return Path(os.path.relpath(Path(frame.source).resolve(), Path(image_root).resolve())).as_posix()
    return output_name(frame) + Path(frame.source).suffix


def image_size(frame: Frame) -> tuple[int, int]:
    """(width, height); decodes the image only when the frame does not know its size, then lets it go."""
    if frame.width and frame.height:
        return frame.width, frame.height
    loaded = frame._image is not None
    height, width = frame.image.shape[:2]
    if not loaded:
        frame.release_image()  # frames of a resumed run must not all stay decoded in memory
    return width, height
