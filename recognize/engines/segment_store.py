"""Intermediate results of a dataset-scope pipeline, kept on disk so a killed run resumes.

A pipeline with a dataset-scope stage (e.g. `region_outliers`) cannot write any image's final
output before every image has passed the stages in front of it. The engines save each frame
after those stages (`OUT/.partial/segment<i>/<name>.json`, atomically); a re-run loads them
instead of recomputing, so `kill -9` costs at most the batch in flight.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from recognize.atomic import write_text
from recognize.errors import RecognizeError
from recognize.frame import Frame
from recognize.outputs.json_output import read_frame

PARTIAL_DIR = ".partial"


class SegmentStore:
    def __init__(self, root: Path | None, segment: int) -> None:
        self.dir = None if root is None else Path(root) / f"segment{segment}"

    def load(self, frame: Frame) -> Frame | None:
        if self.dir is None or not frame.name:
            return None
        path = self.dir / f"{frame.name}.json"
        if not path.is_file():
            return None
        try:
            done = read_frame(path)
        except RecognizeError:  # damaged: recompute
            return None
        done.name = frame.name
        return done

    def save(self, frame: Frame) -> None:
        if self.dir is not None and frame.name:
            write_text(self.dir / f"{frame.name}.json", frame.to_json(indent=None))


def clear(root: Path | None) -> None:
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)
