"""A run's inputs, and everything it must know about all of them, in a sqlite file instead of memory.

`recognize run` needs facts about every input at once: that no two inputs are one file, that no
two get one output name (`recognize.images.dedupe_names`), that no two write one file
(`recognize.runner.check_claims`), which are still to do, and, for `finish`, the finished ones in
input order. Held as Python lists, dicts and sets, that is ~1 KB per input on the driver (14
million images: 10+ GB). Here each of those is a table in one scratch sqlite file in the temporary
folder (`TMPDIR`), so the driver's memory stays flat (sqlite's page cache is bounded) and the disk
holds the rest; the file is deleted when the run ends. Why sqlite: it is in the standard library,
its B-trees give set membership, ordered iteration and random access by position on disk, and it
needs no server.

Inputs are expanded twice over the table, never from the sources twice: pass 1 streams
`recognize.images.iter_inputs` into `raw` (and every name into `used`), pass 2 reads `raw` in
order through `dedupe_names` into `inputs`, exactly as `expand_inputs` does in memory.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recognize.atomic import process_alive
from recognize.errors import RecognizeError
from recognize.frame import Frame
from recognize.images import dedupe_names, iter_inputs

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is Python 3.11+

_PREFIX = "recognize-run-"  # then the pid of the run that owns the folder
_CHUNK = 2_000  # rows per insert or fetch (a few hundred KB of Python objects)


class DiskSet:
    """A set of strings in one table (what `dedupe_names` needs: `in` and `add`)."""

    def __init__(self, db: sqlite3.Connection, table: str) -> None:
        self._db, self._table = db, table
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} (item TEXT PRIMARY KEY) WITHOUT ROWID")

    def __contains__(self, item: object) -> bool:
        return self._db.execute(f"SELECT 1 FROM {self._table} WHERE item = ?", (item,)).fetchone() is not None

    def add(self, item: str) -> None:
        self._db.execute(f"INSERT OR IGNORE INTO {self._table} (item) VALUES (?)", (item,))


class DiskMap:
    """A str -> str mapping in one table, its keys stored without a common `prefix` (the output folder
    every claimed path starts with): what `check_claims` needs (`in`, `get`, `[]`, `[]=`)."""

    def __init__(self, db: sqlite3.Connection, table: str, prefix: str = "") -> None:
        self._db, self._table, self._prefix = db, table, prefix
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")

    def _key(self, key: str) -> str:
        return key[len(self._prefix):] if self._prefix and key.startswith(self._prefix) else "\0" + key

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self._db.execute(f"SELECT value FROM {self._table} WHERE key = ?", (self._key(key),)).fetchone()
        return default if row is None else row[0]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: str) -> None:
        self._db.execute(f"INSERT OR REPLACE INTO {self._table} (key, value) VALUES (?, ?)", (self._key(key), value))


class RunInputs:
    """The run's (path or URL, output name) pairs in input order, on disk; see the module docstring.

    `expand` fills it; iterate it (as often as needed) for the pairs; `mark_todo` and `todo` for the
    inputs to process; `entries` for a sequence of per-input tuples that `finish` reads. `close()`
    deletes the file."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=directory))
        self.path = self._folder / "inputs.sqlite"
        self._count = 0
        try:
            remove_stale_scratch(self._folder.parent)
            self._db = sqlite3.connect(self.path, check_same_thread=False)
        except BaseException:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise
        try:
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-16000", "temp_store=FILE"):
                self._db.execute(f"PRAGMA {pragma}")  # scratch data: a crash deletes it anyway
            self._db.execute("CREATE TABLE inputs (pos INTEGER PRIMARY KEY, source TEXT, name TEXT UNIQUE, "
                             "url INTEGER)")
            self._db.execute("CREATE TABLE todo (pos INTEGER PRIMARY KEY)")
        except BaseException:  # a full disk: no folder or open file is left behind
            self.close()
            raise

    @classmethod
    def expand(cls, inputs: Iterable[str | os.PathLike[str]], *, exclude: str | os.PathLike[str] | None = None,
               directory: str | os.PathLike[str] | None = None) -> RunInputs:
        """`recognize.images.expand_inputs` into a table: same pairs, same order, same errors."""
        try:
            table = cls(directory)
        except (OSError, sqlite3.Error) as exc:
            raise _scratch_error(exc, directory) from None
        try:
            table._fill(inputs, exclude)
        except sqlite3.Error as exc:  # disk full (an OSError here is the inputs' own, not the table's)
            table.close()
            raise _scratch_error(exc, directory) from None
        except BaseException:
            table.close()
            raise
        return table

    def _fill(self, inputs: Iterable[str | os.PathLike[str]], exclude: str | os.PathLike[str] | None) -> None:
        db = self._db
        db.execute("CREATE TABLE raw (pos INTEGER PRIMARY KEY, source TEXT, name TEXT, url INTEGER)")
        used = DiskSet(db, "used")
        rows: list[tuple[str, str, int]] = []

        def flush() -> None:
            db.executemany("INSERT INTO raw (source, name, url) VALUES (?, ?, ?)", rows)
            db.executemany("INSERT OR IGNORE INTO used (item) VALUES (?)", ((name,) for _, name, _ in rows))
            rows.clear()

        for path, name in iter_inputs(inputs, exclude=exclude):
            rows.append((str(path), name, isinstance(path, str)))
            if len(rows) >= _CHUNK:
                flush()
        flush()
        deduped = dedupe_names(self._read("SELECT source, name, url FROM raw ORDER BY pos"), used,
                               DiskSet(db, "seen_paths"), DiskSet(db, "taken"))
        batch: list[tuple[str, str, int]] = []
        for path, name in deduped:
            batch.append((str(path), name, isinstance(path, str)))
            if len(batch) >= _CHUNK:
                db.executemany("INSERT INTO inputs (source, name, url) VALUES (?, ?, ?)", batch)
                batch.clear()
        db.executemany("INSERT INTO inputs (source, name, url) VALUES (?, ?, ?)", batch)
        for table in ("raw", "used", "seen_paths", "taken"):
            db.execute(f"DROP TABLE {table}")
        db.commit()
        self._count = db.execute("SELECT COUNT(*) FROM inputs").fetchone()[0]

    def _read(self, query: str, *args: Any, db: sqlite3.Connection | None = None) -> Iterator[tuple[Path | str, str]]:
        """(Path, or str for a URL; name) per row of `query`, fetched in chunks (a cursor of its own)."""
        cursor = (db or self._db).execute(query, args)
        while chunk := cursor.fetchmany(_CHUNK):
            for source, name, url in chunk:
                yield (source if url else Path(source)), name

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[Path | str, str]]:
        return self._read("SELECT source, name, url FROM inputs ORDER BY pos")

    def frames(self) -> Iterator[Frame]:
        """A bare Frame per input (source and name), in order."""
        return (Frame(source=str(path), name=name) for path, name in self)

    def source_of(self, name: str) -> Path | str:
        """The path (or URL) of the input named `name`."""
        source, url = self._db.execute("SELECT source, url FROM inputs WHERE name = ?", (name,)).fetchone()
        return source if url else Path(source)

    def claim_map(self, table: str, out: Path) -> DiskMap:
        """An empty on-disk mapping for `check_claims` (keys: paths inside `out`)."""
        self._db.execute(f"DROP TABLE IF EXISTS {table}")
        return DiskMap(self._db, table, prefix=Path(out).as_posix() + "/")

    # -- what is left to do --------------------------------------------------------------------
    def mark_todo(self, todo: Iterable[bool]) -> int:
        """Record, for each input in order, whether it is to be processed; returns how many are."""
        self._db.execute("DELETE FROM todo")
        rows: list[tuple[int]] = []
        for pos, flag in enumerate(todo, 1):
            if flag:
                rows.append((pos,))
                if len(rows) >= _CHUNK:
                    self._db.executemany("INSERT INTO todo (pos) VALUES (?)", rows)
                    rows.clear()
        self._db.executemany("INSERT INTO todo (pos) VALUES (?)", rows)
        self._db.commit()
        return self._db.execute("SELECT COUNT(*) FROM todo").fetchone()[0]

    def todo(self) -> Iterator[tuple[Path | str, str]]:
        """The inputs marked to do, in order. Reads through a connection of its own, opened by
        whichever thread iterates (an engine may read its inputs on a prefetch thread)."""
        db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            yield from self._read("SELECT source, name, url FROM inputs JOIN todo USING (pos) ORDER BY pos", db=db)
        finally:
            db.close()

    # -- what finish reads ---------------------------------------------------------------------
    def entries(self, table: str, rows: Iterable[Sequence[Any]]) -> EntryTable:
        """Store `rows` (tuples of str / int, in order) as a sequence that `FrameFiles` or
        `ShardFrames` can index, slice and iterate without holding them."""
        self._db.execute(f"DROP TABLE IF EXISTS {table}")
        self._db.execute(f"CREATE TABLE {table} (pos INTEGER PRIMARY KEY, row TEXT)")
        batch: list[tuple[str]] = []
        for row in rows:
            batch.append((json.dumps([str(v) if isinstance(v, Path) else v for v in row]),))
            if len(batch) >= _CHUNK:
                self._db.executemany(f"INSERT INTO {table} (row) VALUES (?)", batch)
                batch.clear()
        self._db.executemany(f"INSERT INTO {table} (row) VALUES (?)", batch)
        self._db.commit()
        count = self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        return EntryTable(self._db, table, 0, count)

    def close(self) -> None:
        """Delete the file (the table is scratch space for one run)."""
        try:
            self._db.close()
        finally:
            shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_stale_scratch(directory: Path) -> int:
    """Delete the scratch folders that runs killed before their end (SIGKILL, power loss) left in
    `directory`; returns how many. A folder of a live process, or of another user, is left alone."""
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        pid = name[len(_PREFIX):].split("-", 1)[0] if name.startswith(_PREFIX) else ""
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(directory / name, ignore_errors=True)
            removed += 1
    return removed


def _scratch_error(exc: BaseException, directory: str | os.PathLike[str] | None) -> RecognizeError:
    """One line for a temporary folder that cannot take the table (full, read-only, missing)."""
    where = directory or os.environ.get("TMPDIR") or "the temporary folder"
    reason = (getattr(exc, "strerror", None) or str(exc)).strip()
    return RecognizeError(f"cannot write the run's list of inputs in {where} ({reason}); the disk may be full: "
                          "free some space there, or set TMPDIR to a folder with room")


class EntryTable(Sequence[tuple[Any, ...]]):
    """Rows `start <= i < stop` of an entries table: `len`, `[i]`, `[a:b]` and iteration in order."""

    def __init__(self, db: sqlite3.Connection, table: str, start: int, stop: int) -> None:
        self._db, self._table, self._start, self._stop = db, table, start, stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("entries are sliced with step 1 only")
            return EntryTable(self._db, self._table, self._start + start, self._start + max(start, stop))
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        row = self._db.execute(f"SELECT row FROM {self._table} WHERE pos = ?", (self._start + index + 1,)).fetchone()
        return tuple(json.loads(row[0]))

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        cursor = self._db.execute(f"SELECT row FROM {self._table} WHERE pos > ? AND pos <= ? ORDER BY pos",
                                  (self._start, self._stop))
        while chunk := cursor.fetchmany(1000):
            for (row,) in chunk:
                yield tuple(json.loads(row))
