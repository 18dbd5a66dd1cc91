"""Image preprocessing exactly as the official Grounding DINO inference does it.

The reference resizes the PIL image so its short side is 800 (long side at most 1333) with
torchvision's bilinear resize, then ToTensor and ImageNet normalisation. Doing the same here
keeps boxes comparable with the reference.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def resized_shape(width: int, height: int, size: int = 800, max_size: int | None = 1333) -> tuple[int, int]:
    """(height, width) after the reference resize: short side `size`, long side capped at `max_size`."""
    if max_size is not None:
        short, long = float(min(width, height)), float(max(width, height))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def preprocess(image: np.ndarray, size: int = 800, max_size: int | None = 1333) -> torch.Tensor:
    """RGB uint8 HxWx3 -> normalised float tensor 3xhxw at the reference size."""
    return to_pixels(resize(image, size, max_size))


def resize(image: np.ndarray, size: int = 800, max_size: int | None = 1333) -> Image.Image:
    """The reference resize alone (Pillow: the costly part, made ahead by `GroundingDino.prepare`)."""
    pil = Image.fromarray(image)
    return F.resize(pil, list(resized_shape(pil.width, pil.height, size, max_size)))


def to_pixels(resized: Image.Image) -> torch.Tensor:
    """A `resize`d image -> the normalised float tensor 3xhxw (ToTensor, then ImageNet mean/std)."""
    return F.normalize(F.to_tensor(resized), MEAN, STD)
