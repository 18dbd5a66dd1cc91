"""Building SAM with segment-anything's own builders, and loading official checkpoints strictly.

segment-anything's `build_sam*` helpers load with a plain `torch.load` (arbitrary pickles) and
report a mismatch as a multi-page traceback. We build the bare architecture with those same
builders and load the weights ourselves: `weights_only=True`, every key accounted for, and a
one-line `ModelFileError` that says what does not fit.
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.build_sam import _build_sam, sam_model_registry
from segment_anything.modeling import Sam as SamModel

from recognize.errors import ModelFileError
from recognize_sam.config import SamConfig

__all__ = ["EMBED_DIMS", "SamConfig", "build_sam", "load_checkpoint"]

#: Image-encoder width of each official variant; a checkpoint's width tells which variant it is.
EMBED_DIMS = {"vit_h": 1280, "vit_l": 1024, "vit_b": 768}
_PATCH_KEY = "image_encoder.patch_embed.proj.weight"


def build_sam(model: str = "vit_h", config: SamConfig | None = None, seed: int | None = None) -> SamModel:
    """The SAM architecture (`model` variant, or `config` when given) with freshly initialised weights.

    With `seed`, the initialisation is reproducible and leaves the global RNG untouched.
    """
    def build() -> SamModel:
        if config is not None:
            return _build_sam(
                encoder_embed_dim=config.encoder_embed_dim,
                encoder_depth=config.encoder_depth,
                encoder_num_heads=config.encoder_num_heads,
                encoder_global_attn_indexes=list(config.encoder_global_attn_indexes),
            )
        return sam_model_registry[model](checkpoint=None)

    if seed is None:
        sam = build()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = build()
    return sam.eval()


def _variant_of(state: dict[str, torch.Tensor]) -> str | None:
    weight = state.get(_PATCH_KEY)
    if not isinstance(weight, torch.Tensor):
        return None
    return next((name for name, dim in EMBED_DIMS.items() if dim == weight.shape[0]), None)


def load_checkpoint(sam: SamModel, path: str | Path, expected: str = "SAM") -> SamModel:
    """Load an official SAM state dict into `sam`: safe unpickling, no missing/unexpected/reshaped keys."""
    from recognize.weights_file import load_strictly, read_weights

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: SAM checkpoint not found")
    state = read_weights(path, "SAM checkpoint", mmap=False)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: not a SAM checkpoint (expected a state dict of tensors)")
    variant = _variant_of(state)
    return load_strictly(sam, state, path, f"SAM {expected}",
                         looks_like=f"a {variant}" if variant and variant != expected else None)
