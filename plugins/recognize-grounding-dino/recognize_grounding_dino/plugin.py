"""Entry point of the `recognize-grounding-dino` distribution (group `recognize`, name `grounding_dino`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import recognize

_BASE = "https://huggingface.co/ShilongLiu/GroundingDINO/resolve/main/"
_HOME = "https://github.com/IDEA-Research/GroundingDINO"

#: Model card and file of each preset's official checkpoint (here, not in `model`, so that
#: registering the cards does not import torch).
CHECKPOINTS = {
    "swint_ogc": ("groundingdino_swint_ogc", "groundingdino_swint_ogc.pth"),
    "swinb": ("groundingdino_swinb_cogcoor", "groundingdino_swinb_cogcoor.pth"),
}
_TRAINED = {
    "swint_ogc": "Swin-T, trained on O365, GoldG, Cap4M",
    "swinb": "Swin-B, trained on COCO, O365, GoldG, Cap4M, OpenImage, ODinW-35, RefCOCO",
}


@recognize.hookimpl
def register_stages(register: Callable[[type], None]) -> None:
    from recognize_grounding_dino.stage import GroundingDino

    register(GroundingDino)


@recognize.hookimpl
def register_models(register: Callable[[Any], None]) -> None:
    from recognize.hub import ModelCard, ModelFile

    for preset, (card, filename) in CHECKPOINTS.items():
        register(ModelCard(
            name=card,
            files=(ModelFile(filename, _BASE + filename),),
            description=f"Grounding DINO {_TRAINED[preset]} (official weights; no published sha256). "
                        "Text encoder vocab: the bert-base-uncased-vocab card.",
            homepage=_HOME,
            license="Apache-2.0",
        ))
