"""Building SAM 2 from the sam2 package's own configs, and loading official checkpoints strictly.

`sam2.build_sam.build_sam2` composes a hydra config, instantiates it and loads the checkpoint;
on a mismatch it logs the key list and raises a bare `RuntimeError()`. We compose and
instantiate the same config with the same overrides (so the model is the one `build_sam2`
gives), then load the weights ourselves: `weights_only=True`, every key accounted for, and a
one-line `ModelFileError` that says what does not fit and which checkpoint it looks like.
"""

from __future__ import annotations

from pathlib import Path

import torch

from recognize.errors import ModelFileError
from recognize.weights_file import load_strictly, read_weights
from recognize_sam2.cards import VARIANTS, config_name
from recognize_sam2.config import Sam2Config

#: `build_sam2(apply_postprocessing=True)`'s overrides (its default, and what SAM2ImagePredictor users get):
#: a single-mask prediction falls back to the best multimask candidate when it is not stable.
POSTPROCESSING = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
]

#: (trunk width, trunk blocks) of each official variant: a checkpoint's shapes tell which one it is.
TRUNK_SIZES = {"hiera_tiny": (96, 12), "hiera_small": (96, 16), "hiera_base_plus": (112, 24), "hiera_large": (144, 48)}
_PATCH_KEY = "image_encoder.trunk.patch_embed.proj.weight"
_RELEASE_21_KEY = "no_obj_embed_spatial"  # SAM 2.1 added it; SAM 2 checkpoints lack it


def build_sam2(
    model: str = "hiera_large", release: str = "2.1", config: Sam2Config | None = None, seed: int | None = None
) -> torch.nn.Module:
    """SAM 2 (`model` variant of `release`, or `config` when given) with freshly initialised weights.

    With `seed`, the initialisation is reproducible and leaves the global RNG untouched.
    """
    import sam2  # noqa: F401  (initialises hydra with the package's config module)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    overrides = list(POSTPROCESSING)
    if config is not None:
        model, release = "hiera_tiny", "2.1"
        overrides += config.overrides()
    cfg = compose(config_name=config_name(model, release), overrides=overrides)
    OmegaConf.resolve(cfg)

    if seed is None:
        sam = instantiate(cfg.model, _recursive_=True)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = instantiate(cfg.model, _recursive_=True)
    return sam.eval()


def describe_checkpoint(state: dict[str, torch.Tensor]) -> str | None:
    """`SAM 2.1 hiera_small` when the state's trunk has an official variant's width and depth."""
    weight = state.get(_PATCH_KEY)
    if not isinstance(weight, torch.Tensor):
        return None
    blocks = {key.split(".")[3] for key in state if key.startswith("image_encoder.trunk.blocks.")}
    size = (weight.shape[0], len(blocks))
    variant = next((name for name in VARIANTS if TRUNK_SIZES[name] == size), None)
    if variant is None:
        return None
    return f"SAM {'2.1' if _RELEASE_21_KEY in state else '2'} {variant}"


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    loaded = read_weights(path, "SAM 2 checkpoint", mmap=False)
    # Meta's files hold {"model": state_dict}; a bare state dict (what torch.save(model.state_dict()) writes) is fine too
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else loaded
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: not a SAM 2 checkpoint (expected {{'model': state dict of tensors}})")
    return state


def load_checkpoint(sam: torch.nn.Module, path: str | Path, expected: str = "SAM 2") -> torch.nn.Module:
    """Load an official SAM 2 checkpoint into `sam`: safe unpickling, no missing/unexpected/reshaped keys."""
    path = Path(path)
    state = _read_state(path)
    found = describe_checkpoint(state)
    return load_strictly(sam, state, path, expected, looks_like=f"a {found}" if found and found != expected else None)
