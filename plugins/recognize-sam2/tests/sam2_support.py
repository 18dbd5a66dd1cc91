"""Constants and helpers shared by this distribution's tests (a unique module name, not `conftest`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[3]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))

#: SAM 2 with a 5-block, 8-wide Hiera trunk: SAM 2's own classes and config, cheap enough for this CPU.
TINY_CONFIG = {"embed_dim": 8, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3]}
TINY = {"config": TINY_CONFIG, "weights": "random", "seed": 0, "device": "cpu"}


def random_boxes(height: int, width: int, count: int, seed: int = 0) -> np.ndarray:
    """xyxy pixel boxes of varied size inside a height x width image."""
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(0, width * 0.7, count)
    y0 = rng.uniform(0, height * 0.7, count)
    x1 = np.minimum(x0 + rng.uniform(8, width * 0.5, count), width - 1)
    y1 = np.minimum(y0 + rng.uniform(8, height * 0.5, count), height - 1)
    return np.stack([x0, y0, x1, y1], axis=1)
