"""`colour_blobs`: a small deterministic localizer, registered as a real plugin for these tests.

It works like a neural localizer in the one way that matters for tiling: it sees the image only
at a fixed input size (`input_size` px on the long side) and finds an object only if it covers
at least `min_pixels` pixels there. Each tag names a colour; every connected blob of that colour
becomes a region with a box mapped back to the image's pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

import recognize
from recognize import Frame, Region, Stage, StageParams

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


class ColourBlobs(Stage):
    name = "colour_blobs"
    kind = "localizer"

    class Params(StageParams):
        input_size: int = 128
        min_pixels: int = 4
        device: str = "cpu"
        batch_size: int = 1

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            height, width = frame.image.shape[:2]
            scale = self.params.input_size / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            seen = np.asarray(Image.fromarray(frame.image).resize(size, Image.BILINEAR)).astype(int)
            for tag in frame.tags:
                colour = COLOURS.get(tag.name)
                if colour is None:
                    continue
                close = np.abs(seen - np.array(colour)).sum(axis=2) < 200
                labels, _ = ndimage.label(close)
                for index, found in enumerate(ndimage.find_objects(labels), start=1):
                    pixels = int((labels[found] == index).sum())
                    if pixels < self.params.min_pixels:
                        continue
                    ys, xs = found
                    box = (xs.start / scale, ys.start / scale, xs.stop / scale, ys.stop / scale)
                    box = (max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3]))
                    frame.regions.append(Region(box=box, score=min(1.0, pixels / 100), tag=tag.name,
                                                tag_zh=tag.name_zh, source=self.name))
        return frames


@recognize.hookimpl
def register_stages(register):
    register(ColourBlobs)
