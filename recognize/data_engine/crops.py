"""Cropping a region out of its frame, with padding, clipped to the image (the data engine's first step)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]

# -- cropping --------------------------------------------------------------------------------


def crop_box(image_size: tuple[int, int], box: Sequence[float], padding: float = 0.0) -> tuple[int, int, int, int]:
    """Integer pixel window (x0, y0, x1, y1) of `box` grown by `padding` x its size on each side.

    `image_size` is (height, width). The window is clipped to the image and is at least one pixel
    wide and high, so a thin box still gives the tagger something to look at. Raises ValueError
    for a box with no overlap with the image (nothing there to crop).
    """
    height, width = int(image_size[0]), int(image_size[1])
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box {tuple(box)} has non-finite coordinates")
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(f"box {tuple(box)} lies outside the {width}x{height} image")
    pad_x, pad_y = padding * (x1 - x0), padding * (y1 - y0)
    left = max(0, math.floor(x0 - pad_x))
    top = max(0, math.floor(y0 - pad_y))
    right = min(width, math.ceil(x1 + pad_x))
    bottom = min(height, math.ceil(y1 + pad_y))
    if right <= left:
        right = min(width, left + 1)
        left = right - 1
    if bottom <= top:
        bottom = min(height, top + 1)
        top = bottom - 1
    return left, top, right, bottom


def crop_region(image: np.ndarray, box: Sequence[float], padding: float = 0.0) -> np.ndarray:
    """The pixels of `box` (xyxy) plus `padding` (a fraction of the box size per side), as a copy."""
    left, top, right, bottom = crop_box(image.shape[:2], box, padding)
    return np.ascontiguousarray(image[top:bottom, left:right])


