"""High-resolution grounding for recognize: a `tiled` stage that runs any localizer on overlapping
slices of large images plus the whole image, and merges what they find.

    from recognize_tiles import Tiled
"""

from __future__ import annotations

__all__ = ["Tiled"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Tiled":
        from recognize_tiles.stage import Tiled

        return Tiled
    raise AttributeError(name)
