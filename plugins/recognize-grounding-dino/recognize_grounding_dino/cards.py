"""The official Grounding DINO checkpoints: one model card per preset.

Kept apart from `plugin` (which registers them) and `stage` (which loads them) so that registering the
cards imports neither torch nor the stage.
"""

from __future__ import annotations

_BASE = "https://huggingface.co/ShilongLiu/GroundingDINO/resolve/main/"
_HOME = "https://github.com/IDEA-Research/GroundingDINO"

#: Model card and file of each preset's official checkpoint.
CHECKPOINTS = {
    "swint_ogc": ("groundingdino_swint_ogc", "groundingdino_swint_ogc.pth"),
    "swinb": ("groundingdino_swinb_cogcoor", "groundingdino_swinb_cogcoor.pth"),
}
_TRAINED = {
    "swint_ogc": "Swin-T, trained on O365, GoldG, Cap4M",
    "swinb": "Swin-B, trained on COCO, O365, GoldG, Cap4M, OpenImage, ODinW-35, RefCOCO",
}


def cards() -> list:  # -> list[recognize.hub.ModelCard]
    from recognize.hub import ModelCard, ModelFile

    return [
        ModelCard(
            name=card,
            files=(ModelFile(filename, _BASE + filename),),
            description=f"Grounding DINO {_TRAINED[preset]} (official weights; no published sha256). "
                        "Text encoder vocab: the bert-base-uncased-vocab card.",
            homepage=_HOME,
            license="Apache-2.0",
        )
        for preset, (card, filename) in CHECKPOINTS.items()
    ]
