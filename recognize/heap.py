"""Freed activation memory stays in the process for the next operator (glibc's malloc, Linux).

Why: glibc serves every allocation above its mmap threshold (128 KiB, adjusted up to at most 32 MiB)
with a fresh `mmap` and unmaps it again on `free`. A model's large activations are allocated and
freed once per layer (SAM vit_h's qkv output, 4,096 x 3,840 floats, 63 MB; Grounding DINO's encoder
FFN, 17,821 x 2,048 floats, 146 MB; SAM's global-attention bias chunks, 256 MiB), so every layer
page-faults and zero-fills them again before its GEMM can write them. Measured on the 2-core AMD
EPYC the benchmarks run on (`benchmarks/README.md`, "Freed memory kept for reuse"): oneDNN's GEMM on
Grounding DINO's FFN shape ran at 185 GFLOP/s into fresh pages and 404 into reused ones (the square
2048^3 probe, whose 16 MB output stays under the threshold, 440); the whole Grounding DINO forward
4.09 -> 3.26 s, SAM vit_h's image encoder 21.5 -> 18.5 s. The outputs are the same bits: only where
the memory comes from changes.

`keep_freed_memory()` turns glibc's mmap off for allocations (`M_MMAP_MAX` 0: large blocks come from
the heap too) and raises its trim threshold (`M_TRIM_THRESHOLD`), so freed blocks stay in the heap
and the next layer's allocation of the same size reuses their pages. It is called when stages run
(`recognize.engines.batches.apply_stages`: `recognize run`, `Pipeline`, the Ray workers) and when the
server starts (`recognize serve`).
Other allocators (jemalloc, tcmalloc, which PyTorch also recommends for CPU inference) keep freed
memory the same way; this needs nothing installed or preloaded.

Cost: memory freed inside a stage stays counted in the process's RSS until something hands it back.
Between the stages of a chain `recognize.resident_weights.release()` does (`malloc_trim`: free pages
in the heap's middle too), so a chain's peak is still about one stage's working memory (measured:
the benchmark's tag -> box -> mask chain on 4 photos peaked at 4,729 MiB with it, 4,297 without, and
ran 1.21x faster). The server does not trim between requests: its RSS stays at the busiest request's
working memory, which the next request reuses. glibc only;
elsewhere (macOS, musl, Windows) this does nothing. `RECOGNIZE_KEEP_FREED_MEMORY=0` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

__all__ = ["ENV", "keep_freed_memory"]

#: set to 0 to leave glibc's malloc settings as they are
ENV = "RECOGNIZE_KEEP_FREED_MEMORY"
#: mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: freed memory at the heap's top above this goes back to the system at once (1 GiB: more than any
#: single activation of the built-in models; `malloc_trim` between stages hands back the rest)
TRIM_THRESHOLD = 1 << 30

_lock = threading.Lock()
_state: bool | None = None  # None: not tried yet; then whether the settings are in force


def keep_freed_memory() -> bool:
    """Keep freed memory in the heap for reuse (see module doc). Idempotent and cheap after the first
    call; the first one decides for the process. Returns whether the settings are in force."""
    global _state
    if _state is not None:
        return _state
    with _lock:
        if _state is None:
            _state = _apply()
    return _state


def _apply() -> bool:
    if os.environ.get(ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    # mallopt returns 1 on success; set the trim threshold first, so that turning mmap off never
    # runs with the default 128 KiB threshold (which would give large freed blocks straight back)
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(libc.mallopt(_M_MMAP_MAX, 0))


def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (`gnu_get_libc_version`): mallopt's parameters are glibc's."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
