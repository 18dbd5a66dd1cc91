"""Entry point of the `recognize-sam` distribution (group `recognize`, name `sam`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import recognize


@recognize.hookimpl
def register_stages(register: Callable[[type], None]) -> None:
    from recognize_sam.stage import Sam

    register(Sam)


@recognize.hookimpl
def register_models(register: Callable[[Any], None]) -> None:
    from recognize_sam.cards import cards

    for card in cards():
        register(card)
