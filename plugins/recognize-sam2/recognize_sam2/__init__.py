"""SAM 2 for recognize: a `sam2` segmenter stage that turns each region's box into a mask.

    from recognize_sam2 import Sam2
"""

from __future__ import annotations

__all__ = ["Sam2"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # the stage pulls in torch, hydra and sam2; import it only when asked for, so that loading
    # the plugin (every `recognize` command does) stays cheap
    if name == "Sam2":
        from recognize_sam2.stage import Sam2

        return Sam2
    raise AttributeError(name)
