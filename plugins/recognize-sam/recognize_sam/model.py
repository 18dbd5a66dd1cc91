"""Building SAM with segment-anything's own builders, and loading official checkpoints strictly.

segment-anything's `build_sam*` helpers load with a plain `torch.load` (arbitrary pickles) and
report a mismatch as a multi-page traceback. We build the bare architecture with those same
builders and load the weights ourselves: `weights_only=True`, every key accounted for, and a
one-line `ModelFileError` that says what does not fit.

Deliberate differences from `build_sam*`:
- a model about to receive a checkpoint is built with its parameters on the meta device
  (`build_sam(..., on_meta=True)`; `recognize.meta_init`) and gets the memory-mapped checkpoint's
  tensors assigned: segment-anything initialises vit_h's 2.5 GB of weights randomly first (seconds),
  and its loader held them twice;
- the image encoder's attention is `recognize_sam.attention.LeanAttention` (in-place relative-position
  adds and softmax: one 1 GiB attention matrix alive per global block instead of three; bit for bit);
- its blocks are `recognize_sam.lean_block.LeanBlock` (no qkv/projection work on window padding,
  fused attention, oneDNN linears on AVX-512 CPUs): ~1.5-2.3x faster on CPU, embeddings within ~2e-5 of
  segment-anything's largest value on vit_h, not bit for bit (`use_segment_anything` restores the plain forward);
- the mask decoder's linears are `recognize.onednn_linear.OneDNNLinear` (oneDNN's fp32 GEMM on AVX-512 CPUs,
  ~2x MKL's on AMD; another summation order, logits within ~1e-6; `use_segment_anything` restores them too).
"""

from __future__ import annotations

from pathlib import Path

import torch
from segment_anything.build_sam import _build_sam, sam_model_registry
from segment_anything.modeling import Sam as SamModel

from recognize.errors import ModelFileError
from recognize.onednn_linear import use_onednn_linears
from recognize_sam.config import SamConfig
from recognize_sam.lean_block import use_lean_blocks

__all__ = ["EMBED_DIMS", "SamConfig", "build_sam", "load_checkpoint"]

#: Image-encoder width of each official variant; a checkpoint's width tells which variant it is.
EMBED_DIMS = {"vit_h": 1280, "vit_l": 1024, "vit_b": 768}
_PATCH_KEY = "image_encoder.patch_embed.proj.weight"


def build_sam(model: str = "vit_h", config: SamConfig | None = None, seed: int | None = None,
              on_meta: bool = False) -> SamModel:
    """The SAM architecture (`model` variant, or `config` when given) with freshly initialised weights.

    With `seed`, the initialisation is reproducible and leaves the global RNG untouched. With
    `on_meta`, the parameters are meta tensors (no memory, no initialisation): only for a model
    `load_checkpoint` fills next. Buffers are real either way (the pixel statistics are no checkpoint's).
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

    if on_meta:
        from recognize.meta_init import parameters_on_meta

        with parameters_on_meta():
            sam = build()
    elif seed is None:
        sam = build()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = build()
    use_onednn_linears(sam.mask_decoder)
    return use_lean_blocks(sam).eval()


def _variant_of(state: dict[str, torch.Tensor]) -> str | None:
    weight = state.get(_PATCH_KEY)
    if not isinstance(weight, torch.Tensor):
        return None
    return next((name for name, dim in EMBED_DIMS.items() if dim == weight.shape[0]), None)


def load_checkpoint(sam: SamModel, path: str | Path, expected: str = "SAM") -> SamModel:
    """Load an official SAM state dict into `sam`: safe unpickling, no missing/unexpected/reshaped keys.

    The file is memory-mapped; into a model built `on_meta` its tensors are assigned, not copied."""
    from recognize.weights_file import load_strictly, read_weights

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: SAM checkpoint not found")
    state = read_weights(path, "SAM checkpoint")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: not a SAM checkpoint (expected a state dict of tensors)")
    variant = _variant_of(state)
    return load_strictly(sam, state, path, f"SAM {expected}",
                         looks_like=f"a {variant}" if variant and variant != expected else None)
