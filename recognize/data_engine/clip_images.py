"""CLIP image features (open_clip), for clustering region crops when the tagger's embedding is not wanted.

`ClipImageEncoder.load(model_name, checkpoint, device)` builds the model once per process through
`recognize.stage.shared_models`; `embed(images)` gives L2-normalised float32 [N, D] features of RGB
uint8 arrays, preprocessed with the model's own eval transform. `ViT-B-16` with no checkpoint reads
OpenAI's weights from the `clip-vit-b-16` hub card (the same file the open-set taggers use); any
other open_clip architecture (a registered config) needs a local weights file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recognize.device_copies import to_device
from recognize.errors import ModelFileError
from recognize.stage import shared_models


class ClipImageEncoder:
    """An open_clip image tower with its preprocessing."""

    def __init__(self, model: nn.Module, transform, device: str, batch_size: int = 32) -> None:
        self.model = model
        self.transform = transform
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def load(
        cls, model_name: str = "ViT-B-16", checkpoint: str | os.PathLike[str] | None = None, device: str = "cpu"
    ) -> ClipImageEncoder:
        """The shared encoder for (model, weights, device), built on first request."""
        import open_clip

        path = _weights(model_name, checkpoint)

        def build() -> tuple[nn.Module, object]:
            if model_name == "ViT-B-16" and checkpoint is None:
                from open_clip.model import build_model_from_openai_state_dict

                from recognize.taggers.openset import read_clip_state

                try:
                    model = build_model_from_openai_state_dict(read_clip_state(path), cast_dtype=None).float()
                except (KeyError, RuntimeError, ValueError) as exc:
                    raise ModelFileError(f"{path}: not OpenAI CLIP ViT-B/16 weights ({exc})") from None
                transform = open_clip.image_transform(model.visual.image_size, is_train=False)
            else:
                try:
                    model, _, transform = open_clip.create_model_and_transforms(model_name, pretrained=str(path))
                except RuntimeError as exc:
                    raise ModelFileError(f"{path}: not weights for open_clip model {model_name!r} ({exc})") from None
            return model.eval().requires_grad_(False).to(device), transform

        model, transform = shared_models.get(("open_clip_image", model_name, str(path.resolve()), device), build)
        return cls(model, transform, device)

    @torch.inference_mode()
    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised image features [N, D] of RGB uint8 images."""
        from PIL import Image

        out = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.transform(Image.fromarray(im)) for im in images[start : start + self.batch_size]])
            features = self.model.encode_image(to_device(batch, self.device)).float()
            out.append(torch.nn.functional.normalize(features, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _weights(model_name: str, checkpoint: str | os.PathLike[str] | None) -> Path:
    from recognize.hub import resolve_path

    if checkpoint is None:
        if model_name != "ViT-B-16":
            raise ModelFileError(f"CLIP model {model_name!r} needs clip_checkpoint (a local weights file)")
        return resolve_path(None, "clip-vit-b-16", "ViT-B-16.pt")
    return resolve_path(str(checkpoint), "clip-vit-b-16", Path(checkpoint).name)
