"""Entry point of the `recognize-grounding-dino` distribution (group `recognize`, name `grounding_dino`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import recognize


@recognize.hookimpl
def register_stages(register: Callable[[type], None]) -> None:
    from recognize_grounding_dino.stage import GroundingDino

    register(GroundingDino)


@recognize.hookimpl
def register_models(register: Callable[[Any], None]) -> None:
    from recognize_grounding_dino.cards import cards

    for card in cards():
        register(card)
