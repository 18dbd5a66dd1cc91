"""Deterministic stages with fast-mode parameters, for the fast-mode and `eval compare` tests.

Registered like `teststages`: in subprocesses through RECOGNIZE_PLUGINS=speedstages (this folder on
PYTHONPATH).
"""

from __future__ import annotations

import recognize
from recognize import Frame, Region, Stage, StageParams
from recognize.fast_modes import cap_regions


class GridBoxes(Stage):
    """`count` boxes per tag on a diagonal, scores falling with the index; `shift` moves every box
    (a stand-in for a fast mode that moves boxes a little); `max_regions` is the real region cap;
    `quantize` only marks the stage as in a fast mode."""

    name = "grid_boxes"
    kind = "localizer"

    class Params(StageParams):
        count: int = 3
        shift: float = 0.0
        score_offset: float = 0.0
        max_regions: int | None = None
        quantize: str = "none"  # a fast-mode flag only (nothing here is quantized): the CPU warning's test

    def process(self, frames: list[Frame]) -> list[Frame]:
        p = self.params
        for frame in frames:
            h, w = frame.image.shape[:2]
            step = min(h, w) / (2 * p.count + 2)
            for tag in frame.tags:
                for i in range(p.count):
                    x0, y0 = step * i + p.shift, step * i
                    box = (x0, y0, min(x0 + 2 * step, w), y0 + 2 * step)
                    frame.regions.append(Region(box=box, score=0.9 - 0.1 * i + p.score_offset, tag=tag.name,
                                                source=self.name))
            cap_regions(frame, p.max_regions, self.name)
        return frames


@recognize.hookimpl
def register_stages(register):
    register(GridBoxes)
