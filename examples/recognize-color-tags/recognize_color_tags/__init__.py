"""A complete recognize plugin in one file: a `color_tags` tagger stage.

It names the colours that cover at least `min_fraction` of the image (hue bins in HSV, plus
black / white / gray by value and saturation). Install it (`pip install -e examples/recognize-color-tags`)
and it shows up in `recognize plugins` and in recipes as `use: color_tags`.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

import recognize
from recognize import Frame, Stage, StageParams, Tag

# Hue ranges in degrees [start, end) for the chromatic colours.
HUES = {"red": [(0, 15), (345, 360)], "orange": [(15, 45)], "yellow": [(45, 70)], "green": [(70, 170)],
        "cyan": [(170, 200)], "blue": [(200, 260)], "purple": [(260, 300)], "pink": [(300, 345)]}
COLORS = [*HUES, "black", "white", "gray"]


class ColorTags(Stage):
    """Tags an image with its dominant colours (score = fraction of pixels)."""

    name = "color_tags"
    kind = "tagger"

    class Params(StageParams):
        min_fraction: float = Field(0.15, ge=0.0, le=1.0, description="smallest share of pixels to tag a colour")

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            fractions = color_fractions(frame.image)
            frame.tags.extend(
                Tag(name=color, score=round(float(share), 4), index=COLORS.index(color), source=self.name)
                for color, share in fractions.items()
                if share >= self.params.min_fraction
            )
        return frames


def color_fractions(image: np.ndarray) -> dict[str, float]:
    rgb = image.reshape(-1, 3).astype(np.float32) / 255.0
    high, low = rgb.max(axis=1), rgb.min(axis=1)
    delta = high - low
    saturation = np.where(high > 0, delta / np.maximum(high, 1e-6), 0.0)
    r, g, b = rgb.T
    safe = np.maximum(delta, 1e-6)
    hue = np.select(
        [high == r, high == g],
        [((g - b) / safe) % 6, (b - r) / safe + 2],
        (r - g) / safe + 4,
    ) * 60.0
    achromatic = saturation < 0.2
    labels = {
        "black": (high < 0.2),
        "white": (high >= 0.85) & achromatic,
        "gray": (high >= 0.2) & (high < 0.85) & achromatic,
    }
    chromatic = ~(labels["black"] | achromatic)
    for color, ranges in HUES.items():
        labels[color] = chromatic & np.logical_or.reduce([(hue >= a) & (hue < z) for a, z in ranges])
    total = len(rgb)
    return {color: float(labels[color].sum()) / total for color in COLORS}


@recognize.hookimpl
def register_stages(register):
    register(ColorTags)
