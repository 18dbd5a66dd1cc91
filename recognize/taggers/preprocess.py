"""The official RAM / RAM++ / Tag2Text image transform, from RGB uint8 arrays.

API: `resize_image(image, size)` -> `PIL.Image` (SxS, Pillow BILINEAR), `normalize(uint8 [B,S,S,3])`
-> float32 [B,3,S,S], and `preprocess(images, size)` doing both for a list of images.

Why Pillow: the official transform resizes a PIL image with torchvision `Resize((S, S))`, which
hands the work to Pillow's BILINEAR filter; Pillow widens the filter support when it shrinks
(antialiasing), so a tensor or OpenCV resize gives different pixels and different tags. There is
no aspect-ratio preservation and no crop. EXIF orientation is the loader's business
(`recognize.images` applies it; the official scripts do not).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from recognize.images import as_rgb_array

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def resize_image(image: np.ndarray | Image.Image, size: int) -> Image.Image:
    """Plain resize to `size` x `size` with Pillow's (antialiasing) BILINEAR filter."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(as_rgb_array(image))
    elif image.mode != "RGB":
        image = image.convert("RGB")
    return image.resize((size, size), Image.Resampling.BILINEAR)


def normalize(resized: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B,S,S,3] (or [S,S,3]) -> float32 [B,3,S,S]: /255, then ImageNet mean/std (as ToTensor+Normalize)."""
    tensor = torch.as_tensor(np.asarray(resized))
    if tensor.ndim == 3:
        tensor = tensor[None]
    tensor = tensor.permute(0, 3, 1, 2).to(torch.float32).div(255)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    return tensor.sub(mean).div(std).contiguous()


def preprocess(images: Sequence[np.ndarray | Image.Image], size: int) -> torch.Tensor:
    """A batch of RGB images (any size) -> the model input, float32 [B,3,size,size]."""
    if len(images) == 0:
        return torch.empty(0, 3, size, size)
    resized = np.stack([np.asarray(resize_image(image, size)) for image in images])
    return normalize(resized)
