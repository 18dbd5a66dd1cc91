"""Atomic file writes: a reader sees the old file or the whole new one, never a half-written one.

The temp file sits beside its target as `.<name>.<pid>.<random>.part`; a process killed mid-write
(`kill -9`, power loss) leaves it behind, and `remove_stale_temps` deletes those of processes that
are gone (a concurrent run's temps, whose process is alive, are left alone).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _file_mode() -> int:
    """Mode a plain `open()` would give a new file: mkstemp's 0600 would hide outputs from other users."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()
TEMP_SUFFIX = ".part"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+\.part$")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    binary = "b" in mode
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def process_alive(pid: int) -> bool:
    """Whether process `pid` may still run: what decides that a leftover temp file, scratch folder or
    partial shard named after its writer's pid is stale. Another user's process counts as alive (its
    files are left alone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process: leave its files alone
    return True


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete the temp files `atomic_write` left under `folder` (recursively) in processes that no
    longer run; returns how many. Unreadable sub-folders are skipped."""
    removed = 0
    for root, _dirs, files in os.walk(folder, onerror=lambda _: None):
        for name in files:
            match = _TEMP_NAME.match(name)
            if match is None or process_alive(int(match.group(1))):
                continue
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
                removed += 1
    return removed
