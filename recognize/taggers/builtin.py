"""Built-in taggers, registered through the same hooks as third-party plugins.

Stages: `ram`, `ram_plus` (recognize.taggers.ram_stages) and the Tag2Text stages. Models: the cards
of `recognize.taggers.cards` (checkpoints, tag lists, vocab, CLIP weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recognize.hookspecs import hookimpl


@hookimpl
def register_stages(register: Callable[[type], None]) -> None:
    from recognize.taggers.ram_stages import Ram, RamPlus
    from recognize.taggers.tag2text_stages import Tag2TextCaption, Tag2TextTagger

    for stage in (Ram, RamPlus, Tag2TextTagger, Tag2TextCaption):
        register(stage)


@hookimpl
def register_models(register: Callable[[Any], None]) -> None:
    from recognize.taggers.cards import CARDS

    for card in CARDS:
        register(card)
