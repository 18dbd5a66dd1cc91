"""Where output files go, so that every file in OUT has exactly one producer.

Layout of a run's folder:

    OUT/manifest.json  OUT/summary.json  OUT/.recognize/  OUT/.partial/   the run's own files
    OUT/<filename>                                                       dataset-level outputs (coco, ...)
    OUT/frames/<name><suffix>                                            per-image results

Per-image results live under `OUT/frames/` and nothing else does, so no image, whatever it is
called (`summary.jpg`, `coco.jpg`, `..jpg`), can overwrite a run file or a dataset file. A frame's
`name` is its path relative to the input folder, extension included (`sub/img.jpg`), so `x.jpg`
and `x.png` in one folder stay two results; characters that are not safe in a file name on every
system (`\\`, control characters) are %-escaped, and `%` itself too, so distinct names stay distinct.
Dataset-level file names from recipes are plain names (no folders, not a run file): see
`check_plain_name`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from recognize.errors import RecognizeError
from recognize.frame import Frame

#: the sub-folder of OUT that holds every per-image result
FRAMES_DIR = "frames"
#: names in OUT that belong to the runner; no output may use them
RUN_FILES = frozenset({"manifest.json", "summary.json", FRAMES_DIR, ".partial", ".recognize"})

_UNSAFE = re.compile(r"[\\%\x00-\x1f\x7f]")


def escape_part(part: str) -> str:
    """One path component made safe as a file name on any system; injective (`%` is escaped too)."""
    escaped = _UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", part)
    if escaped in ("", ".", ".."):
        escaped = escaped.replace(".", "%2E") or "%00"
    return escaped


def name_from_parts(parts: tuple[str, ...] | list[str]) -> str:
    """The output name of a file at relative path `parts` (each part escaped, joined with `/`)."""
    return "/".join(escape_part(part) for part in parts)


def output_name(frame: Frame) -> str:
    """The frame's output name (relative, POSIX); refuses names that would leave their folder.

    Frames built in Python often have no name: the source's file name stands in.
    """
    name = frame.name if frame.name else escape_part(Path(frame.source).name)
    if not name or name.startswith("<"):
        raise RecognizeError(f"frame from {frame.source!r} has no output name: set frame.name")
    pure = PurePosixPath(name)
    if "\\" in name or pure.is_absolute() or any(part in ("", ".", "..") for part in name.split("/")):
        raise RecognizeError(f"output name {name!r} must be a relative path inside the output folder")
    return pure.as_posix()


def output_path(frame: Frame, out_dir: str | Path, suffix: str) -> Path:
    """`OUT/frames/<name><suffix>`, e.g. suffix `.json` or `.annotated.jpg`: a per-image result."""
    return Path(out_dir) / FRAMES_DIR / (output_name(frame) + suffix)


def named_path(frame: Frame, folder: str | Path, suffix: str = "", *, drop_extension: bool = False) -> Path:
    """`folder/<name><suffix>` for an output with its own per-image folder (YOLO's `labels/`);
    `drop_extension` replaces the image's extension (YOLO pairs `images/a.jpg` with `labels/a.txt`)."""
    name = output_name(frame)
    if drop_extension:
        pure = PurePosixPath(name)
        name = pure.with_name(pure.stem).as_posix() if pure.suffix else name
    return Path(folder) / (name + suffix)


def check_plain_name(value: str, *, extra_suffixes: tuple[str, ...] = ("",)) -> str:
    """Validator for `filename:` parameters: a plain file name inside OUT, not one of the run's own.

    Raises ValueError (pydantic turns it into a recipe error naming the field).
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a file name is required (a plain name such as `coco.json`)")
    if "/" in value or "\\" in value or os.path.isabs(value) or value in (".", "..") or "\x00" in value:
        raise ValueError(f"{value!r} must be a plain file name inside the output folder (no folders, no `..`)")
    if _UNSAFE.search(value):
        raise ValueError(f"{value!r}: control characters are not allowed in a file name")
    for suffix in extra_suffixes:
        if value + suffix in RUN_FILES:
            raise ValueError(f"{value + suffix!r} is one of the run's own files "
                             f"({', '.join(sorted(RUN_FILES))}); choose another name")
    return value


def dataset_file_name(frame: Frame, image_root: str | os.PathLike[str] | None) -> str:
    """How a dataset file (COCO, tags JSONL) names the image: its path relative to `image_root` when
    set (so `image_root/<name>` opens it), else the output name (which keeps the image's extension)."""
    if image_root is not None:
        return Path(os.path.relpath(Path(frame.source).resolve(), Path(image_root).resolve())).as_posix()
    name = output_name(frame)
    suffix = Path(frame.source).suffix
    return name if not suffix or name.endswith(suffix) else name + suffix


def image_size(frame: Frame) -> tuple[int, int]:
    """(width, height); decodes the image only when the frame does not know its size, then lets it go."""
    if frame.width and frame.height:
        return frame.width, frame.height
    loaded = frame._image is not None
    height, width = frame.image.shape[:2]
    if not loaded:
        frame.release_image()  # frames of a resumed run must not all stay decoded in memory
    return width, height
