"""Segment Anything for recognize: a `sam` segmenter stage that turns each region's box into a mask.

    from recognize_sam import Sam
"""

from __future__ import annotations

__all__ = ["Sam"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # the stage pulls in torch and segment_anything; import it only when asked for, so that
    # loading the plugin (every `recognize` command does) stays cheap
    if name == "Sam":
        from recognize_sam.stage import Sam

        return Sam
    raise AttributeError(name)
