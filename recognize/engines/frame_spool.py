"""Surviving frames between segments, kept on disk so the driver holds none of them.

Between the segments of a pipeline (image stages, then a dataset stage, then image stages
again...) the walk must carry every surviving frame forward in input order. Kept as a Python
list, that costs the driver ~1 KB a frame (10^7 frames: ~10 GB). A `FrameSpool` appends each
frame's JSON to one file and reads them back in order, once per consumer; the driver keeps only
a count. A frame whose pixels were handed in as an array (not read from a file) cannot be read
again, so it stays in memory as is (library calls with arrays are small by nature).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from recognize.frame import Frame


class FrameSpool:
    """An append-only, in-order sequence of frames in a JSONL file; `len()` and repeated iteration."""

    def __init__(self, directory: Path | None = None) -> None:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="spool-", suffix=".jsonl", dir=directory)
        self.path = Path(name)
        self._writer = os.fdopen(handle, "w", encoding="utf-8")
        self._count = 0
        self._held: dict[int, Frame] = {}  # position -> a frame whose pixels exist only in memory

    def append(self, frame: Frame, *, keep_object: bool = False) -> None:
        if keep_object:
            self._held[self._count] = frame
            self._writer.write("\n")
        else:
            self._writer.write(frame.to_json(indent=None) + "\n")
        self._count += 1

    def extend(self, frames: Iterable[Frame], like: FrameSpool | None = None) -> FrameSpool:
        """Append `frames`; one with pixels stays an object when it came as an array: for input
        frames, any with pixels (nothing is read yet); for frames that went through a dataset stage
        (same order as `like`), those `like` held."""
        for position, frame in enumerate(frames):
            held = frame._image is not None and (like is None or position in like._held)
            self.append(frame, keep_object=held)
        return self

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Frame]:
        self._writer.flush()
        with self.path.open(encoding="utf-8") as reader:
            for position in range(self._count):
                line = reader.readline()
                held = self._held.get(position)
                yield held if held is not None else Frame.from_json(line)

    def close(self) -> None:
        """Delete the file (the spool is scratch space; checkpoints live in the SegmentStore)."""
        if not self._writer.closed:
            self._writer.close()
        self.path.unlink(missing_ok=True)

    def __del__(self) -> None:  # pragma: no cover - best effort when a run is abandoned
        with contextlib.suppress(OSError, AttributeError):
            self.close()
