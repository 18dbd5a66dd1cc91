"""Reading images the same way everywhere: RGB uint8, EXIF orientation applied, bombs refused.

Every loader in the project goes through `load_image` so that a truncated JPEG, a CMYK TIFF
or a 16-bit PNG behaves the same in the CLI, in Python and on a Ray worker.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from recognize.errors import ImageError, InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif")

#: Largest image accepted, in pixels. 178 MP is Pillow's own bomb limit (2x its warning level);
#: RECOGNIZE_MAX_PIXELS lowers or raises it.
DEFAULT_MAX_PIXELS = 178_956_970


def max_pixels() -> int:
    return int(os.environ.get("RECOGNIZE_MAX_PIXELS", DEFAULT_MAX_PIXELS))


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
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    limit = max_pixels()
    previous = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = limit
        with Image.open(path) as image:
            if image.width * image.height > limit:
                raise ImageError(f"{path}: {image.width}x{image.height} exceeds the {limit}-pixel limit")
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image file (or an unsupported format)") from None
    except OSError as exc:
        raise ImageError(f"{path}: unreadable image ({exc})") from None
    except (ValueError, SyntaxError) as exc:
        raise ImageError(f"{path}: corrupt image ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """`open_image` as an RGB uint8 HxWx3 array."""
    return np.asarray(open_image(path))


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """Files, folders (recursive, by image extension) and globs -> (path, output name) pairs.

    The output name is the file's stem, or for files found in a folder its path relative to that
    folder without suffix, so two `img.jpg` in different sub-folders do not collide. Remaining
    collisions get `-2`, `-3`... Raises `InputError` when an input matches nothing.
    """
    found: list[tuple[Path, str]] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            found.extend((p, p.relative_to(path).with_suffix("").as_posix()) for p in files)
        elif path.exists():
            found.append((path, path.stem))
        elif glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise InputError(f"{text}: the pattern matches no file")
            found.extend((p, p.stem) for p in matches)
        else:
            raise InputError(f"{text}: no such file or folder")
    return _dedupe_names(found)


def _dedupe_names(found: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    seen_paths: set[Path] = set()
    used: dict[str, int] = {}
    result = []
    for path, name in found:
        resolved = path.resolve()
        if resolved in seen_paths:
            continue
        seen_paths.add(resolved)
        if name in used:
            used[name] += 1
            candidate = f"{name}-{used[name]}"
            while candidate in used:
                used[name] += 1
                candidate = f"{name}-{used[name]}"
            name = candidate
        used.setdefault(name, 1)
        result.append((path, name))
    return result
