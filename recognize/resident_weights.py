"""Memory-mapped weights count in a process's RSS only while the stage that uses them runs.

Why: `recognize.weights_file.read_weights` memory-maps checkpoints, and every page a model has
touched stays mapped, so a chain's RSS holds all of its models' weights at once (tag -> box ->
mask: RAM++ 1.3 GB + Grounding DINO 0.7 GB + SAM vit_h 2.6 GB) although only one stage computes
at a time. Between two stages of a chain, `release()` unmaps the resident pages of every weights
file read so far (`madvise(MADV_DONTNEED)`): the pages stay in the kernel's page cache (clean,
reclaimable, shared), and the next stage that reads a weight maps its page again with a minor
fault, from that cache: the same bytes, no copy, no disk read unless the kernel needed the memory
meanwhile. Then the process's peak is one stage's weights plus the working memory, not the sum.

`release()` also hands freed heap memory back to the system (glibc's `malloc_trim`): a stage's
activations freed in the heap's middle otherwise stay counted until the heap top is free.

Safety: `MADV_DONTNEED` on a private file mapping discards pages a process has written
(copy-on-write) and reads the file again: a weight changed in place would silently revert. A
mapping is released only when the kernel reports no private (anonymous) page in it
(`/proc/self/smaps`'s `Anonymous: 0 kB`); one written page keeps the whole file mapped. Linux only;
elsewhere `release()` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from pathlib import Path

__all__ = ["ReleaseReport", "note_mapped", "release"]

_MADV_DONTNEED = 4
_mapped: set[str] = set()
_lock = threading.Lock()


def note_mapped(path: str | os.PathLike[str]) -> None:
    """Record a weights file that was memory-mapped (its pages may be unmapped between stages)."""
    with _lock:
        _mapped.add(os.path.realpath(path))


class ReleaseReport:
    """What one `release()` did: bytes of weight pages unmapped, files kept mapped (written pages)."""

    def __init__(self) -> None:
        self.unmapped_bytes = 0
        self.kept: list[str] = []

    def __repr__(self) -> str:
        return f"ReleaseReport(unmapped_bytes={self.unmapped_bytes}, kept={self.kept})"


def release() -> ReleaseReport:
    """Unmap the resident pages of every clean weights mapping and trim the heap (see module doc)."""
    report = ReleaseReport()
    if not sys.platform.startswith("linux"):
        return report
    with _lock:
        files = set(_mapped)
    libc = _libc()
    if files and libc is not None:
        for start, end, path, rss_kib, anonymous_kib in _mappings_of(files):
            if anonymous_kib:
                report.kept.append(path)
                continue
            if rss_kib and libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0:
                report.unmapped_bytes += rss_kib * 1024
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
    return report


def _mappings_of(files: set[str]) -> list[tuple[int, int, str, int, int]]:
    """(start, end, path, Rss KiB, Anonymous KiB) of this process's mappings of `files`."""
    found: list[tuple[int, int, str, int, int]] = []
    current: list | None = None
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            current = None
            path = head[5].strip() if len(head) == 6 else ""
            if path in files:
                start, end = (int(x, 16) for x in head[0].split("-"))
                current = [start, end, path, 0, 0]
                found.append(current)  # type: ignore[arg-type]
        elif current is not None and head and head[0] in ("Rss:", "Anonymous:"):
            current[3 if head[0] == "Rss:" else 4] = int(head[1])
    return [tuple(m) for m in found]  # type: ignore[misc]


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    return libc

