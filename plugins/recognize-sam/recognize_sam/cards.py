"""The official SAM checkpoints, as model cards for `recognize models ...` and the stage's cache lookups."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from recognize.hub import ModelCard

_BASE = "https://dl.fbaipublicfiles.com/segment_anything/"

#: model variant -> (card name, checkpoint file name). The file names are Meta's own.
CHECKPOINTS: dict[str, tuple[str, str]] = {
    "vit_h": ("sam_vit_h", "sam_vit_h_4b8939.pth"),
    "vit_l": ("sam_vit_l", "sam_vit_l_0b3195.pth"),
    "vit_b": ("sam_vit_b", "sam_vit_b_01ec64.pth"),
}


def cards() -> list[ModelCard]:
    """One card per SAM variant. Meta publishes no checksums or sizes, so both are left unknown."""
    from recognize.hub import ModelCard, ModelFile

    return [
        ModelCard(
            name=card,
            files=(ModelFile(filename, _BASE + filename),),
            description=f"Segment Anything {variant} (Meta AI); sha256 and size not published",
            homepage="https://github.com/facebookresearch/segment-anything",
            license="Apache-2.0",
        )
        for variant, (card, filename) in CHECKPOINTS.items()
    ]


def card_for(variant: str) -> ModelCard:
    name = CHECKPOINTS[variant][0]
    return next(card for card in cards() if card.name == name)
