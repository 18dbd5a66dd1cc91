"""Reading images the same way everywhere: RGB uint8, EXIF orientation applied, bombs refused.

Every loader in the project goes through `load_image` so that a truncated JPEG, a CMYK TIFF
or a 16-bit PNG behaves the same in the CLI, in Python and on a Ray worker.
"""

from __future__ import annotations

import glob
import os
import struct
import threading
import warnings
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from recognize.errors import ImageError, InputError, SettingError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif")

#: Largest image accepted, in pixels. 178 MP is Pillow's own bomb limit (2x its warning level);
#: RECOGNIZE_MAX_PIXELS lowers or raises it.
DEFAULT_MAX_PIXELS = 178_956_970


def max_pixels() -> int:
    """The pixel limit in force: RECOGNIZE_MAX_PIXELS (a positive whole number), else the default."""
    raw = os.environ.get("RECOGNIZE_MAX_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise SettingError(f"RECOGNIZE_MAX_PIXELS={raw!r}: expected a positive whole number of pixels, "
                           f"e.g. {DEFAULT_MAX_PIXELS} (the default)")
    return value


_pillow_limit_lock = threading.Lock()


def _allow_in_pillow(limit: int) -> None:
    """Let Pillow open headers up to `limit` pixels; our own check (from the header) refuses more.

    Why not set and restore `Image.MAX_IMAGE_PIXELS` around each open, as before: it is one global,
    so two threads with different limits raced and one could restore the other's value. Here it is
    only ever raised, once, to what the configured limit needs (Pillow refuses above twice its value),
    and never lowered; what is too big is decided per call from the header, before decoding.
    """
    with _pillow_limit_lock:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and 2 * current < limit:
            Image.MAX_IMAGE_PIXELS = limit // 2 + 1


# Pillow warns for anything over MAX_IMAGE_PIXELS; our limit already refuses what matters, and a
# warning per large photo on stderr tells the user nothing they can act on.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """Any PIL image or array (gray, RGBA, 16-bit, float 0..1) as RGB uint8 HxWx3."""
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    array = np.asarray(image)
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype.kind == "f":
        array = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    elif array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def to_rgb(image: Image.Image) -> Image.Image:
    """PIL image to 8-bit RGB. 16-bit and 32-bit integer modes are scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.uint16)
        return Image.fromarray((array >> 8).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "I":
        array = np.asarray(image, dtype=np.int64)
        top = 65535 if array.max(initial=0) > 255 else 255
        return Image.fromarray((np.clip(array, 0, top) * 255 // top).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white: transparent pixels carry arbitrary colours that must not leak into features.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image file: RGB, EXIF orientation applied.

    Raises `ImageError` with a one-line reason for missing, unreadable, truncated, non-image and
    oversized files.
    """
    from recognize.sources import is_url, open_url

    if isinstance(path, str) and is_url(path):  # a file:// URL is a local path (expand_inputs strips it)
        url = path
        try:
            return _decode(open_url(url), url)
        except OSError as exc:
            raise ImageError(f"{url}: {exc}") from None
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    return _decode(path, str(path))


def _decode(file: Any, path: str) -> Image.Image:
    """Decode `file` (a path or a file object) named `path` in messages."""
    if isinstance(file, Path) and file.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    limit = max_pixels()
    _allow_in_pillow(limit)
    try:
        with Image.open(file) as image:
            if image.width * image.height > limit:  # from the header: nothing is decoded yet
                raise ImageError(f"{path}: {image.width}x{image.height} pixels is more than the limit of "
                                 f"{limit} pixels (RECOGNIZE_MAX_PIXELS); refused as a possible decompression bomb")
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        # Pillow's own check (twice its global limit, which is at least ours): still over our limit
        raise ImageError(f"{path}: more than the limit of {limit} pixels (RECOGNIZE_MAX_PIXELS); "
                         "refused as a possible decompression bomb") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or an unsupported format)") from None
    except MemoryError:
        raise ImageError(f"{path}: too large to decode in the memory available") from None
    except OSError as exc:
        raise ImageError(f"{path}: unreadable image ({_one_line(exc)})") from None
    except (ValueError, SyntaxError, TypeError, IndexError, struct.error, ZeroDivisionError) as exc:
        # Pillow's plugins raise these for malformed headers (bad TIFF tags, odd EXIF)
        raise ImageError(f"{path}: corrupt image ({_one_line(exc) or type(exc).__name__})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """`open_image` as an RGB uint8 HxWx3 array."""
    return np.asarray(open_image(path))


def expand_inputs(
    inputs: Iterable[str | os.PathLike[str]], *, exclude: str | os.PathLike[str] | None = None
) -> list[tuple[Path, str]]:
    """Files, folders (recursive, by image extension) and globs -> (path, output name) pairs.

    The output name is the file's name, extension included, or for files found in a folder (or by
    a glob) its path relative to that folder (or to the glob's fixed prefix): `sub/img.jpg`, so
    two `img.jpg` in different sub-folders, or `img.jpg` beside `img.png`, do not collide.
    Unsafe characters are escaped (`recognize.outputs.paths.name_from_parts`). Names that still
    collide (the same file name given twice from different places) get `-2`, `-3`... before the
    extension, in input order.

    `exclude` is the output folder: nothing inside it is ever an input (a run's results must not
    become inputs of the next run). Raises `InputError` for an input that matches no image (a
    missing path, an empty folder, an empty glob) and for anything that is not a regular file
    (a FIFO would block the run forever).

    The whole list in memory: `recognize run` streams the same pairs through `iter_inputs` and
    `dedupe_names` into a table on disk instead (`recognize.run_inputs`).
    """
    found = list(iter_inputs(inputs, exclude=exclude))
    return list(dedupe_names(found, {name for _, name in found}, set(), set()))


def iter_inputs(
    inputs: Iterable[str | os.PathLike[str]], *, exclude: str | os.PathLike[str] | None = None
) -> Iterator[tuple[Path, str]]:
    """`expand_inputs`' (path, name) pairs one at a time, before names are made distinct
    (`dedupe_names`): list files and manifests are read line by line and folders walked in order,
    so nothing here grows with the number of images (a glob's matches excepted)."""
    from recognize import sources
    from recognize.outputs.paths import name_from_parts

    skip = Path(exclude).resolve() if exclude is not None else None
    for item in inputs:
        text = sources.local_path(str(item))
        path = Path(text)
        if sources.is_url(text):
            yield text, name_from_parts(sources.url_name(text))  # type: ignore[misc]
        elif sources.is_list_file(path):
            yield from iter_inputs(sources.iter_list_file(path), exclude=exclude)
        elif sources.is_manifest(path):
            for source, name in sources.iter_manifest(path):
                for found_path, derived in iter_inputs([source], exclude=exclude):
                    yield found_path, name_from_parts(tuple(name.split("/"))) if name else derived
        elif path.is_dir():
            if skip is not None and _inside(path.resolve(), skip):
                raise InputError(f"{text}: is the output folder {exclude} or inside it; outputs are never "
                                 "inputs (choose another -o)")
            empty = True
            for p in _scan_folder(path, skip):
                empty = False
                yield p, name_from_parts(p.relative_to(path).parts)
            if empty:
                where = " outside the output folder" if skip is not None and _contains(path.resolve(), skip) else ""
                raise InputError(f"{text}: the folder holds no image file{where} "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
        elif path.exists() or path.is_symlink():
            _check_regular(path, text)
            if skip is not None and _inside(path.resolve(), skip):
                raise InputError(f"{text}: is inside the output folder {exclude}; outputs are never inputs "
                                 "(choose another -o, or copy the file out)")
            yield path, name_from_parts((path.name,))
        elif glob.has_magic(text):
            base = _glob_base(text)
            matches = []
            for match in sorted(glob.glob(text, recursive=True)):
                candidate = Path(match)
                if candidate.is_dir() or (skip is not None and _inside(candidate.resolve(), skip)):
                    continue
                _check_regular(candidate, match)
                matches.append(candidate)
            if not matches:
                raise InputError(f"{text}: the pattern matches no file")
            yield from ((p, name_from_parts(_relative_parts(p, base))) for p in matches)
        else:
            raise InputError(f"{text}: no such file or folder")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _contains(path: Path, folder: Path) -> bool:
    """Whether `folder` (the output folder) lies inside `path` (an input folder)."""
    return path in folder.parents


def _check_regular(path: Path, text: str) -> None:
    import stat

    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise InputError(f"{text}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else \
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
        raise InputError(f"{text}: {kind}, not an image file; give regular files only")


def _scan_folder(folder: Path, skip: Path | None) -> Iterator[Path]:
    """Image files under `folder` in the order of their relative path's parts (each folder's
    entries sorted by name, depth first: the same order as sorting every path's parts, without
    holding the tree), without following links to folders and without descending into the output
    folder. Non-regular files with an image extension are refused; unreadable folders are skipped."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        candidate = folder / entry.name
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            if entry.is_symlink() or (skip is not None and _inside(candidate.resolve(), skip)):
                continue
            yield from _scan_folder(candidate, skip)
        elif candidate.suffix.lower() in IMAGE_EXTENSIONS:
            _check_regular(candidate, str(candidate))
            yield candidate


def _glob_base(pattern: str) -> Path:
    """The fixed folder a glob starts from (`photos/**/*.jpg` -> `photos`)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _relative_parts(path: Path, base: Path) -> tuple[str, ...]:
    try:
        return path.relative_to(base).parts
    except ValueError:
        return (path.name,)


class NameSet(Protocol):
    """What `dedupe_names` needs of a set: a Python `set`, or one on disk (`recognize.run_inputs`)."""

    def __contains__(self, item: object) -> bool: ...

    def add(self, item: Any) -> None: ...


def dedupe_names(found: Iterable[tuple[Path | str, str]], used: Container[str], seen_paths: NameSet,
                 taken: NameSet) -> Iterator[tuple[Path | str, str]]:
    """Drop repeats of one file (by resolved path; a URL is its own identity) and give a name already
    taken `-2`, `-3`... before its extension, skipping every name in `used` (all names found, so a
    renamed file never takes the name a later file has by itself). `seen_paths` and `taken` start
    empty and fill as the pairs go by."""
    for path, name in found:
        resolved = path if isinstance(path, str) else str(path.resolve())
        if resolved in seen_paths:
            continue
        seen_paths.add(resolved)
        if name in taken:
            stem, dot, ext = name.rpartition(".")
            if not dot or "/" in ext or not stem or stem.endswith("/"):
                stem, dot, ext = name, "", ""
            count = 2
            while (candidate := f"{stem}-{count}{dot}{ext}") in used or candidate in taken:
                count += 1
            name = candidate
        taken.add(name)
        yield path, name
