"""The done journal of a run folder, looked up through an index on disk instead of a dict in memory.

`OUT/.recognize/done.jsonl` stays the record of truth: one line per finished (or failed) image,
appended as the image's last step, the last line for a name winning, a torn last line ignored.
Reading it into a dict costs the driver ~1 KB per image (14 million images: over 10 GB), so the
runner keeps `OUT/.recognize/done.index.sqlite` beside it: for each name, where its latest line
starts and how long it is. A lookup reads that one line back from the journal.

The index is derived data, checked against the journal every time it is opened: it records how
many bytes of the journal it covers and a hash of the first and last KiB of them; a journal that
grew is indexed from there on (a resumed run reads only the new lines), one that is shorter or
different is indexed again from the start, and an index that sqlite cannot read is rebuilt. A
process killed mid-run loses at most the index rows since its last commit, which the next run
indexes again from the journal.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import IO, Any

#: the runner's bookkeeping inside OUT
STATE_DIR = ".recognize"
DONE_FILE = "done.jsonl"
INDEX_FILE = "done.index.sqlite"
_COMMIT_EVERY = 1000  # journal lines between index commits (a commit is a disk sync)
_CHECK_BYTES = 1024  # bytes hashed at each end of the indexed part of the journal


class DoneJournal:
    """`OUT/.recognize/done.jsonl`: one line per finished image; the last line for a name wins.

    Appending a line is the last step of an image, so a process killed before it leaves an image
    that the next run redoes; a torn last line is ignored (and the next append starts a new line).
    `get(name)` finds a name's latest record through the index (`read()` opens or builds it).
    """

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / STATE_DIR / DONE_FILE
        self.index_path = Path(out) / STATE_DIR / INDEX_FILE
        self._db: sqlite3.Connection | None = None
        self._reader: IO[bytes] | None = None
        self._writer: IO[bytes] | None = None
        self._indexed = 0  # journal bytes the index covers
        self._pending = 0  # index rows not yet committed

    # -- reading -----------------------------------------------------------------------------
    def has_records(self) -> bool:
        """Whether the journal holds any record (read up to the first one; no index needed)."""
        try:
            with self.path.open("rb") as lines:
                return any(_parse(line) is not None for line in lines)
        except OSError:
            return False

    def read(self) -> DoneJournal:
        """Open the index and bring it up to date with the journal. Writes nothing when there is no
        journal (a folder a run may still leave empty)."""
        if not self.path.exists():
            if self.index_path.exists():
                self._reset_index()
            return self
        try:
            self._open_index()
        except sqlite3.DatabaseError:  # damaged (a disk full, a copy mid-write): it is derived data
            self._close_index()
            self._reset_index()
            self._open_index()
        self._index_tail()
        return self

    def get(self, name: str) -> dict[str, Any] | None:
        """The latest record for `name`, or None."""
        if self._db is None:
            return None
        row = self._db.execute("SELECT start, length FROM done WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        if self._reader is None:
            self._reader = self.path.open("rb")
        self._reader.seek(row[0])
        return _parse(self._reader.read(row[1]))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    # -- writing -----------------------------------------------------------------------------
    def append(self, record: dict[str, Any]) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._db is None:
                self.read()  # the journal may exist now; creates the index
                if self._db is None:
                    self._open_index()
            self._writer = self.path.open("ab")
            if not _ends_with_newline(self.path):  # a torn line: ours starts on a line of its own
                self._writer.write(b"\n")
                self._writer.flush()
            self._indexed = self._writer.tell()
        assert self._db is not None
        line = json.dumps(record, ensure_ascii=False).encode("utf-8")
        start = self._writer.tell()
        self._writer.write(line + b"\n")
        self._writer.flush()
        self._db.execute("INSERT OR REPLACE INTO done (name, start, length) VALUES (?, ?, ?)",
                         (record["name"], start, len(line)))
        self._indexed = start + len(line) + 1
        self._pending += 1
        if self._pending >= _COMMIT_EVERY:
            self._commit()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._close_index()

    def reset(self) -> None:
        """Forget every record (`--overwrite` with shards: the spans they name are deleted): the
        journal and its index go; the next `append` starts both afresh."""
        self.close()
        self.path.unlink(missing_ok=True)
        self._reset_index()
        self._indexed = 0

    # -- the index ---------------------------------------------------------------------------
    def _open_index(self) -> None:
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.index_path, check_same_thread=False)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")  # with synchronous=NORMAL: consistent after a kill, few syncs
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS done (name TEXT PRIMARY KEY, start INTEGER, length INTEGER) WITHOUT ROWID")
        db.execute("CREATE TABLE IF NOT EXISTS covers (bytes INTEGER, head TEXT, tail TEXT)")
        row = db.execute("SELECT bytes, head, tail FROM covers").fetchone()
        if row is None or not self._still_covers(*row):
            db.execute("DELETE FROM done")
            db.execute("DELETE FROM covers")
            db.execute("INSERT INTO covers VALUES (0, '', '')")
            db.commit()
            self._indexed = 0
        else:
            self._indexed = row[0]

    def _still_covers(self, size: int, head: str, tail: str) -> bool:
        """Whether the journal's first `size` bytes are still the ones indexed."""
        try:
            if self.path.stat().st_size < size:
                return False
            return (head, tail) == _ends_hash(self.path, size)
        except OSError:
            return False

    def _index_tail(self) -> None:
        """Index the journal's lines past what the index covers (all of them when it is new)."""
        assert self._db is not None
        rows = []
        with self.path.open("rb") as journal:
            journal.seek(self._indexed)
            start = self._indexed
            for raw in journal:
                record = _parse(raw)
                if not raw.endswith(b"\n") and record is None:
                    break  # torn by a killed run: not covered, so a longer version is read next time
                if record is not None:
                    rows.append((record["name"], start, len(raw.rstrip(b"\n"))))
                start += len(raw)
                if len(rows) >= 2_000:
                    self._db.executemany("INSERT OR REPLACE INTO done (name, start, length) VALUES (?, ?, ?)", rows)
                    rows.clear()
            self._db.executemany("INSERT OR REPLACE INTO done (name, start, length) VALUES (?, ?, ?)", rows)
        self._indexed = start
        self._commit()

    def _commit(self) -> None:
        assert self._db is not None
        head, tail = _ends_hash(self.path, self._indexed)
        self._db.execute("UPDATE covers SET bytes = ?, head = ?, tail = ?", (self._indexed, head, tail))
        self._db.commit()
        self._pending = 0

    def _close_index(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._db is not None:
            try:
                self._commit()
            except (sqlite3.Error, OSError):
                pass
            self._db.close()
            self._db = None

    def _reset_index(self) -> None:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.index_path}{suffix}").unlink(missing_ok=True)


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("name"), str) else None


def _ends_hash(path: Path, size: int) -> tuple[str, str]:
    """Hashes of the first and the last KiB of the journal's first `size` bytes."""
    if size <= 0:
        return "", ""
    with path.open("rb") as journal:
        head = journal.read(min(size, _CHECK_BYTES))
        journal.seek(max(0, size - _CHECK_BYTES))
        tail = journal.read(min(size, _CHECK_BYTES))
    return hashlib.sha256(head).hexdigest(), hashlib.sha256(tail).hexdigest()


def _ends_with_newline(path: Path) -> bool:
    """Whether the file is empty or its last byte is a newline."""
    with path.open("rb") as journal:
        end = journal.seek(0, 2)
        if end == 0:
            return True
        journal.seek(end - 1)
        return journal.read(1) == b"\n"
