"""Entry point of the `recognize-owlv2` distribution (group `recognize`, name `owlv2`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import recognize


@recognize.hookimpl
def register_stages(register: Callable[[type], None]) -> None:
    from recognize_owlv2.stage import Owlv2

    register(Owlv2)


@recognize.hookimpl
def register_models(register: Callable[[Any], None]) -> None:
    from recognize_owlv2.cards import cards

    for card in cards():
        register(card)
