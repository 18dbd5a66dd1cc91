"""The `shards` output: per-image results in JSON Lines or Parquet shards, not one file per image.

At 14 million images, one JSON file per image is 14 million inodes to create, list, copy and
delete. This output puts each finished frame (masks as COCO RLE) into `OUT/shards/part-NNNNN.jsonl`
(one `Frame.to_json()` line per frame) or `part-NNNNN.parquet` (one typed row per frame, see
`parquet_schema`), starting a new shard every `frames_per_shard` frames; a run never adds to a shard
an earlier run wrote (a resumed run starts the next number).

With `shards` in a recipe and no `json` output, the runner writes no per-image files: each image's
record is located by the done journal (`OUT/.recognize/done.jsonl`: shard and span: start and end
byte of a JSONL line, or row and row + 1 of a Parquet shard), so resume checks one journal line
and one shard's extent per image (`shard_extent`: no listing of any folder), and the dataset
outputs (`coco`, `yolo`, ...) read their frames back from the shards (`read_span`), in input order.
Add `json` too for per-image files as well.

The two formats fail differently, on purpose:

- JSONL is an append-only log: a line a killed run half wrote has no journal entry; the image is
  redone into a later shard, readers skip the torn line (`read_shards`), and the next run cuts it
  off (`cut_torn_tail`). A kill costs at most the line in flight.
- Parquet cannot be appended to, and a file without its footer is unreadable, so a shard is written
  as `.part-NNNNN.parquet.<pid>.partial` (one row group every `rows_per_group` rows) and renamed to
  `part-NNNNN.parquet` when it closes (rotation, the end of the run, or the run stopping on an
  error). A run killed before the rename loses that open shard: its journal records point at a
  file that does not exist, so those images are redone, and the next run deletes the dead
  `.partial` file. Its number is never reused (a later run numbers past it), so a stale journal
  record can never point into another run's shard.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import importlib.util
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from pydantic import Field, field_validator

from recognize.atomic import process_alive
from recognize.errors import InputError, RecipeError, first_line
from recognize.frame import Frame
from recognize.outputs.paths import check_plain_name
from recognize.stage import OutputStage, StageParams

SHARD_PATTERN = re.compile(r"part-(\d{5,})\.(jsonl|parquet)$")
#: a Parquet shard still being written (hidden; renamed to its final name when it closes)
PARTIAL_PATTERN = re.compile(r"^\.part-(\d{5,})\.parquet\.(\d+)\.partial$")
ShardFormat = Literal["jsonl", "parquet"]


class ShardsParams(StageParams):
    folder: str = Field("shards", description="folder inside the output folder that holds the shards")
    format: ShardFormat = Field(
        "jsonl", description="jsonl: one Frame JSON line per image (append-only, a kill costs one line); "
                             "parquet: typed columns (name, source, width, height, tags, regions with box and "
                             "RLE mask, caption, and the Frame JSON), zstd-compressed; a shard is renamed into "
                             "place when it closes, so a kill costs the open shard's images (redone next run)")
    frames_per_shard: int = Field(10_000, ge=1, le=10_000_000, description="frames per shard before the next one starts")
    rows_per_group: int = Field(1_000, ge=1, le=1_000_000,
                                description="parquet only: frames per row group (the frames held in memory before "
                                            "they are written)")

    @field_validator("folder")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_plain_name(value)


# -- Parquet layout -------------------------------------------------------------------------------
@functools.cache
def parquet_schema() -> Any:
    """The typed columns of a Parquet shard (pyarrow is imported only when a Parquet shard is used)."""
    import pyarrow as pa

    mask = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])  # COCO RLE, as in the JSON
    tag = pa.struct([("name", pa.string()), ("name_zh", pa.string()), ("score", pa.float64()),
                     ("index", pa.int32()), ("source", pa.string())])
    region = pa.struct([("label", pa.string()), ("label_zh", pa.string()), ("score", pa.float64()),
                        ("box", pa.list_(pa.float64(), 4)), ("mask", mask), ("mask_score", pa.float64()),
                        ("source", pa.string())])
    return pa.schema([
        ("name", pa.string()), ("source", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("tags", pa.list_(tag)), ("regions", pa.list_(region)), ("caption", pa.string()),
        # the rest of the Frame (dropped, meta, region meta, ...) as its JSON, masks left out: they are
        # in regions.mask, and storing them twice would double the shard
        ("frame", pa.large_string()),
    ], metadata={b"recognize": b"Frame shard: frame = Frame JSON without masks; masks in regions[].mask"})


#: columns whose min/max a query engine can use to skip row groups; not the long strings (the frame's
#: JSON, RLE counts, captions), whose min/max would bloat every footer and skip nothing
STATISTICS_COLUMNS = ["name", "source", "width", "height", "tags.list.element.name", "tags.list.element.score",
                      "regions.list.element.label", "regions.list.element.score"]


def frame_row(frame: Frame) -> dict[str, Any]:
    """One Parquet row of `frame` (see `parquet_schema`); `row_frame` gives the very same Frame back."""
    data = frame.model_dump(mode="json")
    masks = []
    for region in data["regions"]:
        masks.append(region["mask"])
        region["mask"] = None
    return {
        "name": frame.name, "source": frame.source, "width": frame.width, "height": frame.height,
        "tags": [{"name": t.name, "name_zh": t.name_zh, "score": t.score, "index": t.index, "source": t.source}
                 for t in frame.tags],
        "regions": [{"label": r["tag"], "label_zh": r["tag_zh"], "score": r["score"], "box": r["box"], "mask": mask,
                     "mask_score": r["mask_score"], "source": r["source"]}
                    for r, mask in zip(data["regions"], masks)],
        "caption": frame.caption,
        "frame": json.dumps(data, ensure_ascii=False),
    }


def row_frame(frame_json: str, regions: list[dict[str, Any]] | None) -> Frame:
    """The Frame of a Parquet row: its JSON with each region's mask put back from `regions`."""
    data = json.loads(frame_json)
    for region, typed in zip(data.get("regions") or [], regions or []):
        if typed.get("mask") is not None:
            region["mask"] = typed["mask"]
    return Frame.model_validate(data)


# -- writing --------------------------------------------------------------------------------------
class _JsonlShard:
    """An open JSONL shard: each frame one flushed line (its span: start and end byte)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] = path.open("xb")

    def append(self, frame: Frame) -> tuple[int, int]:
        line = (frame.to_json(indent=None) + "\n").encode("utf-8")
        start = self._handle.tell()
        self._handle.write(line)
        self._handle.flush()  # the journal line that points here comes after this
        return start, start + len(line)

    def close(self) -> None:
        self._handle.close()


class _ParquetShard:
    """An open Parquet shard: rows buffered into row groups in a hidden `.partial` file that is renamed
    to `path` on close (its span: row and row + 1)."""

    def __init__(self, path: Path, rows_per_group: int) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        self._rows_per_group = rows_per_group
        self._buffer: list[dict[str, Any]] = []
        self._rows = 0
        self._writer = pq.ParquetWriter(self.partial, parquet_schema(), compression="zstd",
                                        write_statistics=STATISTICS_COLUMNS)

    def append(self, frame: Frame) -> tuple[int, int]:
        self._buffer.append(frame_row(frame))
        self._rows += 1
        if len(self._buffer) >= self._rows_per_group:
            self._flush()
        return self._rows - 1, self._rows

    def _flush(self) -> None:
        import pyarrow as pa

        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=parquet_schema()))
            self._buffer = []

    def close(self) -> None:
        """Write the footer and rename the shard into place. On failure the `.partial` file stays: its
        images have no readable shard (the next run redoes them), and it holds its number until a
        later run has numbered past it and deletes it, so that number is never given to another shard."""
        try:
            self._flush()
        finally:
            self._writer.close()
        with self.partial.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.partial, self.path)


class ShardsOutput(OutputStage):
    """Per-image frames in JSONL or Parquet shards (masks as RLE); located through the done journal."""

    name: ClassVar[str] = "shards"
    Params: ClassVar[type[StageParams]] = ShardsParams
    append_only: ClassVar[bool] = True

    def __init__(self, params: Any = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        if self.params.format == "parquet" and importlib.util.find_spec("pyarrow") is None:
            raise RecipeError("shards: format parquet needs pyarrow: pip install 'recognize[parquet]' "
                              "(or use format: jsonl)")
        self._shard: _JsonlShard | _ParquetShard | None = None
        self._count = 0
        self._last: dict[str, tuple[str, int, int]] = {}  # name -> (shard, start, end) of its record

    def run_files(self) -> list[str]:
        return [self.params.folder]

    def write(self, frame: Frame, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        shard = self._open(out_dir)
        start, end = shard.append(frame)
        self._last[frame.name or ""] = (shard.path.relative_to(out_dir).as_posix(), start, end)
        self._count += 1
        if self._count >= self.params.frames_per_shard:
            self.close()

    def appended(self, frame: Frame, out_dir: Path) -> dict[str, list[int]]:
        """Where `write` put `frame`: {shard (relative to OUT): [start, end]} (for the done journal)."""
        shard, start, end = self._last.pop(frame.name or "")
        return {shard: [start, end]}

    def finish(self, frames: Sequence[Frame], out_dir: Path) -> None:
        """Close the open shard (the frames are already in the shards)."""
        self.close()

    def close(self) -> None:
        """Close the open shard; a Parquet shard is renamed into place (its rows become readable)."""
        if self._shard is not None:
            shard, self._shard = self._shard, None
            shard.close()

    def _open(self, out_dir: Path) -> _JsonlShard | _ParquetShard:
        if self._shard is None:
            folder = out_dir / self.params.folder
            folder.mkdir(parents=True, exist_ok=True)
            names = os.listdir(folder)
            numbers = []
            for name in names:
                if match := SHARD_PATTERN.match(name) or PARTIAL_PATTERN.match(name):
                    numbers.append(int(match.group(1)))
                if name.endswith(".jsonl") and SHARD_PATTERN.match(name):
                    cut_torn_tail(folder / name)
            # past every number on disk, dead partial files included: a stale journal record may name it
            path = folder / f"part-{max(numbers, default=-1) + 1:05d}.{self.params.format}"
            if self.params.format == "parquet":
                self._shard = _ParquetShard(path, self.params.rows_per_group)
                remove_dead_partials(folder, keep=self._shard.partial)  # only now: its number is past theirs
            else:
                self._shard = _JsonlShard(path)
            self._count = 0
        return self._shard


def remove_dead_partials(folder: Path, keep: Path | None = None) -> int:
    """Delete the `.partial` Parquet shards of runs that no longer run (killed before the rename)."""
    removed = 0
    for name in os.listdir(folder):
        match = PARTIAL_PATTERN.match(name)
        if match and (folder / name) != keep and not process_alive(int(match.group(2))):
            with contextlib.suppress(OSError):
                (folder / name).unlink()
                removed += 1
    return removed


def remove_shards(folder: Path) -> int:
    """Delete the shards in `folder` (what `--overwrite` replaces): files named like a shard and dead
    partial shards, nothing else; returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = remove_dead_partials(folder)
    for path in shard_files(folder):
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def cut_torn_tail(shard: Path) -> int:
    """Cut a line a killed run half wrote off the end of a JSONL `shard` (it has no journal entry: its
    image is redone); returns the bytes removed. Whole lines are never touched."""
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


# -- reading --------------------------------------------------------------------------------------
def shard_extent(path: Path) -> int:
    """How far a shard reaches, in its spans' unit (bytes of a JSONL shard, rows of a Parquet shard);
    -1 when it is missing or unreadable. A journal span [start, end] is intact when end <= this."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_metadata(path).num_rows
        return path.stat().st_size
    except (OSError, ValueError):  # pyarrow's ArrowInvalid (no footer) is a ValueError
        return -1


class _JsonlReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("rb")

    def frame(self, start: int, end: int) -> Frame:
        self._handle.seek(start)
        return Frame.from_json(self._handle.read(end - start).decode("utf-8"))

    def forget(self) -> None:
        """Nothing held between reads."""

    def close(self) -> None:
        self._handle.close()


class _ParquetReader:
    """Rows of a Parquet shard, one row group decoded at a time (frames are read in shard order)."""

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self._file = pq.ParquetFile(path)
        meta = self._file.metadata
        self._starts = [0]
        for group in range(meta.num_row_groups):
            self._starts.append(self._starts[-1] + meta.row_group(group).num_rows)
        self._group = -1
        self._rows: tuple[list[str], list[Any]] = ([], [])

    def frame(self, start: int, end: int) -> Frame:
        group = bisect.bisect_right(self._starts, start) - 1
        if not 0 <= group < len(self._starts) - 1:
            raise ValueError(f"row {start} is past the shard's {self._starts[-1]} rows")
        if group != self._group:
            table = self._file.read_row_group(group, columns=["frame", "regions"])
            self._rows = (table.column("frame").to_pylist(), table.column("regions").to_pylist())
            self._group = group
        row = start - self._starts[group]
        return row_frame(self._rows[0][row], self._rows[1][row])

    def forget(self) -> None:
        """Drop the decoded row group (another shard is being read now)."""
        self._group, self._rows = -1, ([], [])

    def close(self) -> None:
        self._file.close()


def open_shard(path: Path) -> _JsonlReader | _ParquetReader:
    """A reader of the frames of one shard, by span (`reader.frame(start, end)`), either format."""
    return _ParquetReader(path) if Path(path).suffix == ".parquet" else _JsonlReader(path)


def read_span(out_dir: Path, shard: str, start: int, end: int, handles: dict[str, Any]) -> Frame:
    """The frame at span [start, end) of `shard` (relative to `out_dir`): bytes of a JSONL shard, rows
    of a Parquet one. Readers are kept open in `handles` by the caller (close each one when done)."""
    reader = handles.get(shard)
    if reader is None:
        if len(handles) > 16:  # a few open shards at a time
            for old in handles.values():
                old.close()
            handles.clear()
        reader = handles[shard] = open_shard(Path(out_dir) / shard)
    for other in handles.values():  # one decoded Parquet row group in memory, not one per open shard
        if other is not reader:
            other.forget()
    return reader.frame(start, end)


read_line = read_span  # the name from when shards were JSONL only


def _number(path: Path) -> tuple[int, str]:
    match = SHARD_PATTERN.match(path.name)
    return (int(match.group(1)) if match else -1, path.name)


def shard_files(folder: Path) -> list[Path]:
    """The shards (both formats) of a run folder (its `shards/`) or of a folder of shards, in order."""
    folder = Path(folder)
    root = folder / "shards" if (folder / "shards").is_dir() else folder
    try:
        paths = [p for p in root.iterdir() if SHARD_PATTERN.match(p.name) and p.is_file()]
    except OSError:
        return []
    return sorted(paths, key=_number)


def _spans(shard: Path) -> Iterator[tuple[str, int, int]]:
    """(name, start, end) of every whole record of a shard; torn JSONL lines are skipped."""
    if shard.suffix == ".parquet":
        import pyarrow.parquet as pq

        for row, name in enumerate(pq.read_table(shard, columns=["name"]).column("name").to_pylist()):
            yield name or "", row, row + 1
        return
    with shard.open("rb") as handle:
        offset = 0
        for raw in handle:
            start, offset = offset, offset + len(raw)
            if not raw.endswith(b"\n"):
                continue  # torn by a killed run
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(record, dict):  # whole and JSON, but no Frame: not a shard we wrote
                raise ValueError(f"the line at byte {start} is not a JSON object")  # noqa: TRY004 - read_shards' error
            yield str(record.get("name") or ""), start, offset


def read_shards(folder: Path) -> Iterator[Frame]:
    """Every frame in the shards (both formats), the last record for a name winning (a resumed run may
    have written an image twice: once torn or unjournaled, once whole); torn lines are skipped."""
    latest: dict[str, tuple[Path, int, int]] = {}  # in the order names were first seen
    for shard in shard_files(folder):
        try:
            for name, start, end in _spans(shard):
                latest[name] = (shard, start, end)
        except (OSError, ValueError) as exc:
            raise InputError(f"{shard}: not a readable shard ({first_line(exc)})") from None
    handles: dict[str, Any] = {}
    try:
        for shard, start, end in latest.values():
            try:
                yield read_span(shard.parent, shard.name, start, end, handles)
            except ValueError as exc:
                raise InputError(f"{shard}: a record is not a valid Frame ({first_line(exc)})") from None
    finally:
        for reader in handles.values():
            reader.close()

