"""The transformers releases this plugin computes the official results with (`check_transformers`).

Kept apart from `model` so that the stage checks it in `model_files`, before any weight is fetched,
without importing torch or transformers' model code.
"""

from __future__ import annotations

__all__ = ["MIN_TRANSFORMERS", "check_transformers"]

#: The oldest transformers whose Grounding DINO computes what the official code does. From 5.0 to 5.22
#: its vectorised `generate_masks_with_special_tokens_and_transfer_map` gives a phrase's closing "." the
#: text position id 0 where the official code (and transformers 4.x) gives it the phrase's length, which
#: moves every score: the official-code comparison (tests/test_gd_official.py) fails on 5.9, 5.10, 5.12,
#: 5.17, 5.21 and 5.22 and passes on 5.23 and 5.25. (Before 5.9 the lean layers do not fit either.)
MIN_TRANSFORMERS = (5, 23)


def check_transformers(installed: str | None = None) -> None:
    """A one-line error where the installed transformers (or the version `installed`) is older than
    `MIN_TRANSFORMERS` (`recognize.versions.require`): the stage checks in `model_files`, before any
    weight is fetched, and `build_model` again for a model built directly."""
    from recognize.versions import require

    require("transformers", ".".join(map(str, MIN_TRANSFORMERS)), "grounding_dino",
            "earlier 5.x releases number the caption's tokens unlike the official code, so every score would "
            "differ, and the 4.x line does not fit this plugin", installed)
