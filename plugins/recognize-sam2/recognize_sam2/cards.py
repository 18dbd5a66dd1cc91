"""The official SAM 2 and SAM 2.1 checkpoints, as model cards for `recognize models ...` and the stage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # pragma: no cover
    from recognize.hub import ModelCard

Variant = Literal["hiera_tiny", "hiera_small", "hiera_base_plus", "hiera_large"]
Release = Literal["2.1", "2"]

VARIANTS: tuple[str, ...] = ("hiera_tiny", "hiera_small", "hiera_base_plus", "hiera_large")
#: release -> folder of Meta's download server (the dates the checkpoints were published)
_BASE = {
    "2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/",
    "2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/",
}
#: variant -> the short name of its config file in the sam2 package (`sam2.1_hiera_b+.yaml`)
_CONFIG_SUFFIX = {"hiera_tiny": "t", "hiera_small": "s", "hiera_base_plus": "b+", "hiera_large": "l"}


def card_name(variant: str, release: str = "2.1") -> str:
    """`sam2.1_hiera_tiny`: Meta's checkpoint file name without `.pt`, so card and file read alike."""
    return f"sam{release}_{variant}"


def checkpoint_filename(variant: str, release: str = "2.1") -> str:
    return f"{card_name(variant, release)}.pt"


def config_name(variant: str, release: str = "2.1") -> str:
    """The hydra config the sam2 package ships for this checkpoint (`build_sam2`'s `config_file`)."""
    return f"configs/sam{release}/sam{release}_hiera_{_CONFIG_SUFFIX[variant]}.yaml"


def cards() -> list[ModelCard]:
    """One card per released checkpoint. Meta publishes no checksums or sizes, so both are left unknown."""
    from recognize.hub import ModelCard, ModelFile

    return [
        ModelCard(
            name=card_name(variant, release),
            files=(ModelFile(checkpoint_filename(variant, release), _BASE[release] + checkpoint_filename(variant, release)),),
            description=f"SAM {release} {variant.replace('_', ' ')} (Meta AI); sha256 and size not published",
            homepage="https://github.com/facebookresearch/sam2",
            license="Apache-2.0",
        )
        for release in ("2.1", "2")
        for variant in VARIANTS
    ]


def card_for(variant: str, release: str = "2.1") -> ModelCard:
    name = card_name(variant, release)
    return next(card for card in cards() if card.name == name)
