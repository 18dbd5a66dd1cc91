"""Memory-mapped weights count in a process's RSS only while the stage that uses them runs.

Why: `recognize.weights_file.read_weights` memory-maps checkpoints, and every page a model has
touched stays mapped, so a chain's RSS holds all of its models' weights at once (tag -> box ->
mask: RAM++ 1.3 GB + Grounding DINO 0.7 GB + SAM vit_h 2.6 GB) although only one stage computes
at a time. Between two stages of a chain, `release()` unmaps the resident pages of every weights
file read so far whose tensors are still in use (`madvise(MADV_DONTNEED)`): the pages stay in the
kernel's page cache (clean, reclaimable, shared), and the next stage that reads a weight maps its page again with a minor
fault, from that cache: the same bytes, no copy, no disk read unless the kernel needed the memory
meanwhile. Then the process's peak is one stage's weights plus the working memory, not the sum.

`release()` leaves the heap alone: the activation memory a stage freed (`recognize.heap` keeps it
for reuse) is what the next stage's layers allocate from. Handing it back here (`malloc_trim`, as
this module did until 2026-12-02) made every stage page-fault and zero-fill its working memory
again in every batch: on the benchmark's chain (4 photos, batch 2, a VM where a 4 KiB fault cost
~8 us) 1.67 against 0.77 million faults, 12.5 against 7.6 s of system time and 4% of the wall time,
to lower the peak by ~0.1-0.9 GB, depending on the machine (`benchmarks/README.md`, "The heap kept
between a chain's stages").
The heap goes back at the end of a run, when a batch runs out of memory and when a server has no
request left running (`recognize.heap`).

Cost: unmapping and mapping again took ~1.5 s per GB of weights on a busy 2-core machine
(`benchmarks/README.md`; on a quiet one with a 6.18 kernel, a pass over SAM's weights took 0.16 s
after unmapping, 0.05 s resident: large folios), once per batch: ~4 s for SAM vit_h's 2.4 GB there, against a batch of two
photos of ~100 s (batch 1, as `tag_ground_segment_cpu.yaml`, pays it per photo); little or nothing
on a GPU (the weights live on the device once moved there). Only where two or more weights files
are mapped (a single model's pages would just come back). `RECOGNIZE_KEEP_WEIGHTS_MAPPED=1` keeps
them mapped when memory is plentiful and that time matters more.

Safety: `MADV_DONTNEED` on a private file mapping discards pages a process has written
(copy-on-write) and reads the file again: a weight changed in place would silently revert. A
mapping is released only when the kernel reports no private (anonymous) page in it
(`/proc/self/pagemap`); one written page keeps the whole file mapped. Pages come back from the
file's inode, so a checkpoint replaced by rename (as downloads are) is never mixed in; one
overwritten in place during a run would be. Linux only; elsewhere `release()` does nothing.

Which addresses: `read_weights` hands over the tensors it loaded; this module keeps weak references
to their storages (views into torch's private mapping of the file, which stays mapped while any of
them lives) and `release()` madvises exactly the pages those storages span, holding them strongly
meanwhile. Why not the file's lines in /proc/self/maps: a model freed by another thread after that
read would have its range unmapped, and memory mapped there next (anything, anonymous included)
would be zeroed by the madvise; a storage held alive cannot be unmapped under it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import sys
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KEEP_ENV", "ReleaseReport", "loading", "note_mapped", "release", "unmap_pages"]

#: set to 1 to keep every stage's weights mapped (no unmapping, no re-faulting; peak = all models)
KEEP_ENV = "RECOGNIZE_KEEP_WEIGHTS_MAPPED"
_MADV_DONTNEED = 4
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class _MappedFile:
    """One memory-mapped read of a weights file: weak references to the storages it gave out."""

    path: str
    storages: list[weakref.ref]

    def alive(self) -> list[Any]:
        """The storages still in use, held strongly by the caller while it touches their pages."""
        return [storage for ref in self.storages if (storage := ref()) is not None]


_mapped: list[_MappedFile] = []
_lock = threading.Lock()
_release_lock = threading.Lock()  # held by release() throughout; see `loading`
_loads_under_way = 0  # model loads in progress on other threads (`loading`)


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Mark a model load under way (on another thread): `release()` unmaps nothing meanwhile.

    Why: a load may map a weights file and then copy or convert its tensors; a `release()` that
    read the page states just before a page was written (copy-on-write) would discard that write."""
    global _loads_under_way
    with _release_lock:  # waits for a release() in progress, so none runs under the load
        _loads_under_way += 1
    try:
        yield
    finally:
        with _release_lock:
            _loads_under_way -= 1


def note_mapped(path: str | os.PathLike[str], loaded: Any) -> None:
    """Record a memory-mapped read of the weights file `path`: `loaded` is what it gave (a dict of
    tensors, nested in dicts/lists as checkpoints are). Their pages may leave RSS between stages
    while the tensors live; nothing else of the process is ever touched."""
    storages, seen = [], set()
    for tensor in _tensors_in(loaded):
        storage = tensor.untyped_storage()
        if storage.nbytes() and storage.device.type == "cpu" and id(storage) not in seen:
            seen.add(id(storage))
            storages.append(weakref.ref(storage))  # torch keeps one Python object per live storage
    if storages:
        with _lock:
            _mapped[:] = [entry for entry in _mapped if any(ref() is not None for ref in entry.storages)]
            _mapped.append(_MappedFile(os.path.realpath(path), storages))


def _tensors_in(loaded: Any) -> Iterator[Any]:
    import torch

    if isinstance(loaded, torch.Tensor):
        yield loaded
    elif isinstance(loaded, dict):
        for value in loaded.values():
            yield from _tensors_in(value)
    elif isinstance(loaded, (list, tuple)):
        for value in loaded:
            yield from _tensors_in(value)


@dataclass
class ReleaseReport:
    """What one `release()` did: bytes of weight pages unmapped, files kept mapped (written pages)."""

    unmapped_bytes: int = 0
    kept: list[str] = field(default_factory=list)


def release() -> ReleaseReport:
    """Unmap the resident pages of every clean weights mapping still in use (see module doc).

    Only where at least two weights files are mapped (with one, a tagger plus filters say, the next
    stage would map the same pages back, paying the faults for no lower peak), and not while a model
    loads on another thread (`loading`) or with `RECOGNIZE_KEEP_WEIGHTS_MAPPED=1`. The heap is not
    trimmed: the next stage reuses the memory this one freed (module doc)."""
    report = ReleaseReport()
    libc = _libc_for_unmapping()
    if libc is not None:
        with _release_lock:
            if not _loads_under_way:  # else a model is being loaded beside this stage (see `loading`)
                _unmap(libc, report)
    return report


def _libc_for_unmapping() -> ctypes.CDLL | None:
    """The C library where weight pages may be unmapped at all: Linux, and no `RECOGNIZE_KEEP_WEIGHTS_MAPPED=1`."""
    libc = _libc()
    if not sys.platform.startswith("linux") or libc is None or os.environ.get(KEEP_ENV, "") not in ("", "0"):
        return None
    return libc


def _unmap(libc: ctypes.CDLL, report: ReleaseReport) -> None:
    with _lock:
        entries = list(_mapped)
    held = [(entry.path, storages) for entry in entries if (storages := entry.alive())]  # strong until return
    if len({path for path, _ in held}) < 2:  # one weights file: no other stage's weights compete
        return
    for path, storages in held:
        ranges = _page_ranges(storages)
        states = [_page_states(start, end) for start, end in ranges]
        if any(written for _, written in states):
            report.kept.append(path)
            continue
        for (start, end), (resident, _) in zip(ranges, states):
            if resident and libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0:
                report.unmapped_bytes += resident * _PAGE


def unmap_pages(tensor: Any) -> int:
    """Unmap the resident pages that lie wholly inside `tensor`'s storage, where that storage is a
    memory-mapped weights file's (`note_mapped`) and none of its pages was written; returns the bytes.

    For a weight that is no longer read where it lives (`recognize.onednn_linear` multiplies by a
    prepacked copy): its pages would otherwise stay in RSS beside the copy. Reading the tensor later
    maps them again from the page cache, as after `release()`. Nothing is unmapped with
    `RECOGNIZE_KEEP_WEIGHTS_MAPPED=1`, while a model loads on another thread (`loading`), or off Linux."""
    libc = _libc_for_unmapping()
    if libc is None:
        return 0
    storage = tensor.untyped_storage()
    pointer, size = storage.data_ptr(), storage.nbytes()
    if not pointer or storage.device.type != "cpu" or not _is_mapped(pointer):
        return 0
    start, end = -(-pointer // _PAGE) * _PAGE, (pointer + size) // _PAGE * _PAGE  # whole pages only
    if end <= start:
        return 0
    with _release_lock:
        if _loads_under_way:
            return 0
        resident, written = _page_states(start, end)
        if written or not resident:
            return 0
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) != 0:
            return 0
    return resident * _PAGE


def _is_mapped(pointer: int) -> bool:
    """Whether `pointer` is the start of a storage some noted weights file gave out (still alive)."""
    with _lock:
        entries = list(_mapped)
    return any(storage.data_ptr() == pointer for entry in entries for storage in entry.alive())


def _page_ranges(storages: list[Any]) -> list[tuple[int, int]]:
    """The pages `storages` span, as merged [start, end) address ranges. Widening a storage to whole
    pages stays inside its file's mapping: torch maps the whole file from offset 0, page-aligned."""
    spans = sorted((ptr - ptr % _PAGE, -(-(ptr + storage.nbytes()) // _PAGE) * _PAGE)
                   for storage in storages if (ptr := storage.data_ptr()))
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _page_states(start: int, end: int) -> tuple[int, bool]:
    """(resident pages, whether any page is private) of the mapping [start, end).

    `/proc/self/pagemap` has one 64-bit entry per page: bit 63 present, bit 62 swapped, bit 61 a
    file (or shared) page. A present or swapped page that is not a file page is a copy-on-write
    copy: this process wrote it. Reading only these entries is cheap (8 bytes a page), unlike
    `/proc/self/smaps`, which walks every mapping of the process (a fraction of a second with torch).
    Unreadable pagemap: reported as written, so nothing is released."""
    import numpy as np

    first, count = start // _PAGE, (end - start) // _PAGE
    try:
        with open("/proc/self/pagemap", "rb") as pagemap:
            pagemap.seek(first * 8)
            entries = np.frombuffer(pagemap.read(count * 8), dtype=np.uint64)
    except OSError:
        return 0, True
    if len(entries) != count:
        return 0, True
    present = (entries >> np.uint64(63)) & np.uint64(1)
    swapped = (entries >> np.uint64(62)) & np.uint64(1)
    file_page = (entries >> np.uint64(61)) & np.uint64(1)
    written = bool(np.any(((present | swapped) == 1) & (file_page == 0)))
    return int(present.sum()), written


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc

