"""Entry point of the `recognize-sam2` distribution (group `recognize`, name `sam2`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import recognize


@recognize.hookimpl
def register_stages(register: Callable[[type], None]) -> None:
    from recognize_sam2.stage import Sam2

    register(Sam2)


@recognize.hookimpl
def register_models(register: Callable[[Any], None]) -> None:
    from recognize_sam2.cards import cards

    for card in cards():
        register(card)
