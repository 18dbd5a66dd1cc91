"""Google's released OWLv2 checkpoints (as published with transformers), as model cards."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from recognize.hub import ModelCard

Variant = Literal["base_patch16_ensemble", "base_patch16", "large_patch14_ensemble"]
VARIANTS: tuple[str, ...] = ("base_patch16_ensemble", "base_patch16", "large_patch14_ensemble")
WEIGHTS = "model.safetensors"


def repository(variant: str) -> str:
    """`google/owlv2-base-patch16-ensemble`: where Google published the checkpoint."""
    return "google/owlv2-" + variant.replace("_", "-")


def card_name(variant: str) -> str:
    return "owlv2_" + variant


def cards() -> list[ModelCard]:
    """One card per released OWLv2 checkpoint; no checksums are published, so none are checked."""
    from recognize.hub import ModelCard, ModelFile

    return [
        ModelCard(
            name=card_name(variant),
            files=(ModelFile(WEIGHTS, f"https://huggingface.co/{repository(variant)}/resolve/main/{WEIGHTS}"),),
            description=f"OWLv2 {variant.replace('_', ' ')} (Google); sha256 and size not published",
            homepage=f"https://huggingface.co/{repository(variant)}",
            license="Apache-2.0",
        )
        for variant in VARIANTS
    ]


def card_for(variant: str) -> ModelCard:
    name = card_name(variant)
    return next(card for card in cards() if card.name == name)
