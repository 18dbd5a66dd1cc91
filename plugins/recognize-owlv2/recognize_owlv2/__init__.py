"""OWLv2 for recognize: an `owlv2` localizer stage that finds every tag of an image as boxes.

    from recognize_owlv2 import Owlv2
"""

from __future__ import annotations

__all__ = ["Owlv2"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # the stage pulls in torch and transformers; import it only when asked for
    if name == "Owlv2":
        from recognize_owlv2.stage import Owlv2

        return Owlv2
    raise AttributeError(name)
