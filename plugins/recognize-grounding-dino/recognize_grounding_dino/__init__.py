"""Grounding DINO for recognize: a `grounding_dino` localizer stage (tags in, boxes out).

    from recognize import Pipeline
    from recognize_grounding_dino import GroundingDino
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["GroundingDino", "__version__"]


def __getattr__(name: str):
    # the stage pulls in torch; import it only when asked for
    if name == "GroundingDino":
        from recognize_grounding_dino.stage import GroundingDino

        return GroundingDino
    raise AttributeError(name)
