"""The `shards` output: per-image results as JSON Lines shards, not one file per image.

At 14 million images, one JSON file per image is 14 million inodes to create, list, copy and
delete. This output appends each finished frame (`Frame.to_json()`, masks as COCO RLE) as one
line to `OUT/shards/part-NNNNN.jsonl`, starting a new shard every `frames_per_shard` frames; a
run never appends to a shard an earlier run wrote (a resumed run starts the next number).

With `shards` in a recipe and no `json` output, the runner writes no per-image files: each image's
line is located by the done journal (`OUT/.recognize/done.jsonl`: shard, start and end byte), so
resume checks one journal line and one shard's size per image (no listing of any folder), and
the dataset outputs (`coco`, `yolo`, ...) read their frames back from the shards, in input order.
Add `json` too for per-image files as well. A line a killed run half wrote has no journal entry:
the image is redone into a later shard, readers skip the torn line (`read_shards`), and the next run
cuts it off (`cut_torn_tail`), so no partial record outlives the run after the kill. This is an
append-only log, not a set of atomically replaced files (`OutputStage.append_only`): a kill costs
at most the line in flight, never a whole shard of finished images.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

from pydantic import Field, field_validator

from recognize.errors import InputError
from recognize.frame import Frame
from recognize.outputs.paths import check_plain_name
from recognize.stage import OutputStage, StageParams

SHARD_PATTERN = re.compile(r"part-(\d{5,})\.jsonl$")


class ShardsParams(StageParams):
    folder: str = Field("shards", description="folder inside the output folder that holds the shards")
    frames_per_shard: int = Field(10_000, ge=1, le=10_000_000, description="frames per shard before the next one starts")

    @field_validator("folder")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_plain_name(value)


class ShardsOutput(OutputStage):
    """Per-image frames appended to JSONL shards (masks as RLE); located through the done journal."""

    name: ClassVar[str] = "shards"
    Params: ClassVar[type[StageParams]] = ShardsParams
    append_only: ClassVar[bool] = True

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._handle: IO[bytes] | None = None
        self._path: Path | None = None
        self._count = 0
        self._last: dict[str, tuple[str, int, int]] = {}  # name -> (shard, start, end) of its line

    def run_files(self) -> list[str]:
        return [self.params.folder]

    def write(self, frame: Frame, out_dir: Path) -> None:
        handle = self._open(Path(out_dir))
        line = (frame.to_json(indent=None) + "\n").encode("utf-8")
        start = handle.tell()
        handle.write(line)
        handle.flush()  # the journal line that points here comes after this
        assert self._path is not None
        self._last[frame.name or ""] = (self._path.relative_to(out_dir).as_posix(), start, start + len(line))
        self._count += 1
        if self._count >= self.params.frames_per_shard:
            self._close()

    def appended(self, frame: Frame, out_dir: Path) -> dict[str, list[int]]:
        """Where `write` put `frame`: {shard (relative to OUT): [start, end]} (for the done journal)."""
        shard, start, end = self._last.pop(frame.name or "")
        return {shard: [start, end]}

    def finish(self, frames: Sequence[Frame], out_dir: Path) -> None:
        """Close the open shard (the frames are already in the shards)."""
        self._close()

    def _open(self, out_dir: Path) -> IO[bytes]:
        if self._handle is None:
            folder = out_dir / self.params.folder
            folder.mkdir(parents=True, exist_ok=True)
            shards = [p for p in folder.iterdir() if SHARD_PATTERN.match(p.name)]
            for shard in shards:
                cut_torn_tail(shard)
            numbers = [int(m.group(1)) for p in shards if (m := SHARD_PATTERN.match(p.name))]
            self._path = folder / f"part-{max(numbers, default=-1) + 1:05d}.jsonl"
            self._handle = self._path.open("xb")
            self._count = 0
        return self._handle

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def cut_torn_tail(shard: Path) -> int:
    """Cut a line a killed run half wrote off the end of `shard` (it has no journal entry: its image
    is redone); returns the bytes removed. Whole lines are never touched."""
    with shard.open("r+b") as handle:
        size = handle.seek(0, 2)
        end = size
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            chunk = handle.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return 0
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        handle.truncate(end)
        return size - end


def read_line(out_dir: Path, shard: str, start: int, end: int, handles: dict[str, IO[bytes]]) -> Frame:
    """The frame at bytes [start, end) of `shard` (files kept open in `handles` by the caller)."""
    handle = handles.get(shard)
    if handle is None:
        if len(handles) > 16:  # a few open shards at a time
            for old in handles.values():
                old.close()
            handles.clear()
        handle = handles[shard] = (Path(out_dir) / shard).open("rb")
    handle.seek(start)
    return Frame.from_json(handle.read(end - start).decode("utf-8"))


def shard_files(folder: Path) -> list[Path]:
    """The shards of a run folder (its `shards/`) or of a folder of shards, in order."""
    folder = Path(folder)
    root = folder / "shards" if (folder / "shards").is_dir() else folder
    return sorted((p for p in root.glob("*.jsonl") if SHARD_PATTERN.search(p.name)), key=lambda p: p.name)


def read_shards(folder: Path) -> Iterator[Frame]:
    """Every frame in the shards, the last line for a name winning (a resumed run may have written
    an image twice: once torn or unjournaled, once whole); torn lines are skipped."""
    latest: dict[str, tuple[Path, int]] = {}
    order: list[str] = []
    for shard in shard_files(folder):
        with shard.open("rb") as handle:
            offset = 0
            for raw in handle:
                start, offset = offset, offset + len(raw)
                if not raw.endswith(b"\n"):
                    continue  # torn by a killed run
                try:
                    name = json.loads(raw).get("name") or ""
                except ValueError:
                    continue
                if name not in latest:
                    order.append(name)
                latest[name] = (shard, start)
    for name in order:
        shard, start = latest[name]
        with shard.open("rb") as handle:
            handle.seek(start)
            try:
                yield Frame.from_json(handle.readline().decode("utf-8"))
            except ValueError as exc:
                raise InputError(f"{shard}: a line is not a valid Frame ({str(exc).splitlines()[0]})") from None
