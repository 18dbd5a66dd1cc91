"""Entry point of the `recognize-tiles` distribution (group `recognize`, name `tiles`)."""

from __future__ import annotations

from collections.abc import Callable

import recognize


@recognize.hookimpl
def register_stages(register: Callable[[type], None]) -> None:
    from recognize_tiles.stage import Tiled

    register(Tiled)
