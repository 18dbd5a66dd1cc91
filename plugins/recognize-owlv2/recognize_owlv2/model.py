"""OWLv2 built offline from its released architecture, and checkpoints loaded strictly.

`Owlv2ForObjectDetection.from_pretrained` needs the hub (or a folder with config.json) and
tolerates missing or unexpected keys with a warning. We build the released architectures from
the values in Google's config.json files and load the weights ourselves: safetensors (or a
`torch.load(weights_only=True)` .bin), every key accounted for, one-line `ModelFileError`s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from recognize.errors import ModelFileError
from recognize.weights_file import load_strictly, read_weights

#: The released architectures (the config.json of each hub repository); the ensemble and
#: self-trained base checkpoints share one architecture.
_BASE: dict[str, Any] = {
    "projection_dim": 512,
    "text_config": {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8, "num_hidden_layers": 12},
    "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                      "num_hidden_layers": 12, "patch_size": 16, "image_size": 960},
}
_LARGE: dict[str, Any] = {
    "projection_dim": 768,
    "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12},
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                      "num_hidden_layers": 24, "patch_size": 14, "image_size": 1008},
}
ARCHITECTURES = {"base_patch16_ensemble": _BASE, "base_patch16": _BASE, "large_patch14_ensemble": _LARGE}
#: Older hub files still carry this buffer, which current transformers no longer saves.
_IGNORED_SUFFIXES = ("embeddings.position_ids",)


def build_config(variant: str = "base_patch16_ensemble", custom: dict[str, Any] | None = None) -> Any:
    from transformers import Owlv2Config

    values = custom if custom is not None else ARCHITECTURES[variant]
    return Owlv2Config(
        text_config=dict(values.get("text_config", {})),
        vision_config=dict(values.get("vision_config", {})),
        projection_dim=values.get("projection_dim", 512),
    )


def build_owlv2(variant: str = "base_patch16_ensemble", custom: dict[str, Any] | None = None,
                seed: int | None = None) -> torch.nn.Module:
    """The OWLv2 detector with fresh weights (reproducible with `seed`, global RNG untouched)."""
    from transformers import Owlv2ForObjectDetection

    config = build_config(variant, custom)
    if seed is None:
        model = Owlv2ForObjectDetection(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Owlv2ForObjectDetection(config)
    return model.eval()


def image_size(model: torch.nn.Module) -> int:
    return int(model.config.vision_config.image_size)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    state = read_weights(path, "OWLv2 checkpoint")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: not an OWLv2 checkpoint (expected a state dict of tensors)")
    return {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}


def describe_checkpoint(state: dict[str, torch.Tensor]) -> str | None:
    weight = state.get("owlv2.vision_model.embeddings.patch_embedding.weight")
    if not isinstance(weight, torch.Tensor):
        return None
    return {768: "an OWLv2 base (patch 16)", 1024: "an OWLv2 large (patch 14)"}.get(weight.shape[0])


def load_checkpoint(model: torch.nn.Module, path: str | Path, expected: str = "OWLv2") -> torch.nn.Module:
    """Load a released OWLv2 checkpoint into `model`: no missing, unexpected or reshaped keys."""
    path = Path(path)
    state = _read_state(path)
    return load_strictly(model, state, path, expected, looks_like=describe_checkpoint(state))
