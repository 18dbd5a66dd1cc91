"""Freed activation memory stays in the process for the next layer (glibc's malloc, Linux).

Why: glibc serves every allocation above its mmap threshold (128 KiB, adjusted up to at most 32 MiB)
with a fresh `mmap` and unmaps it again on `free`. A model's large activations are allocated and
freed once per layer (SAM vit_h's qkv output, 4,096 x 3,840 floats, 63 MB; Grounding DINO's encoder
FFN, 17,821 x 2,048 floats, 146 MB), so every layer page-faults and zero-fills them again before its
GEMM can write them. Measured on the 2-core AMD EPYC the benchmarks run on (`benchmarks/README.md`,
"Freed memory kept for reuse"): oneDNN's GEMM on Grounding DINO's FFN shape ran at 185 GFLOP/s into
fresh pages and 404 into reused ones (the square 2048^3 probe, whose 16 MB output stays under the
threshold, 440); the whole Grounding DINO forward 4.09 -> 3.26 s, SAM vit_h's image encoder
21.5 -> 18.5 s. The outputs are the same bits: only where the memory comes from changes.

`keep_freed_memory()` turns glibc's mmap off for allocations (`M_MMAP_MAX` 0), raises its trim
threshold (`M_TRIM_THRESHOLD`) so freed blocks stay in the heap for the next allocation, and lets
threads share the main heap (`M_ARENA_MAX` 1). That last one matters off the main thread: glibc gives
other threads their own arenas, whose heaps are capped at 64 MiB, and a larger block there is
mmapped (and unmapped on free) whatever `M_MMAP_MAX` says. glibc fixes its arena limit when the
first few threads allocate, and a thread keeps the arena it first got, so the call comes before
threads start: at the CLI's start (`recognize run`, `recognize serve`: `recognize.cli.main`), in a
server app's start-up, and for Ray workers through their environment (`MALLOC_ARENA_MAX=1`,
`worker_env`, via `recognize.engines.ray_actors.actor_env`: inherited on the local Ray the engine
starts, set on each worker on any other), besides `recognize.engines.batches.apply_stages` (every engine, `Pipeline`).
Other allocators (jemalloc, tcmalloc, which PyTorch also recommends for CPU inference) keep freed
memory the same way; this needs nothing installed or preloaded (with one of them preloaded, the glibc
settings made here are simply unused).

Cost: memory freed inside a call stays counted in the process's RSS until `trim()` hands it back
(`malloc_trim`, free pages in the heap's middle too). That happens at the end of every engine run
(so a `Pipeline` call leaves no more resident than before it), when a batch runs out of memory, and
when a server has no request left running (`recognize.serve.batching.Runner`); not between the
stages of a chain, whose next stage reuses what the last one freed (trimming there made every stage
fault its working memory again in every batch: `recognize.resident_weights`). So the heap holds what
the run's stages freed, at least the largest working memory of any of them (measured on the
benchmark's chain, 4 photos in batches of 2: peak RSS 4,297 MiB with glibc's defaults and 4,729 when
this was trimmed between stages, one session; 4,990-5,058 kept between stages, a later session; on
another VM 4,659 trimmed against 5,575 kept: the cost depends on the machine, `benchmarks/README.md`.
Speed: 1.21x over the defaults, then 1.04x over the trims). The settings are process-wide and stay
for the process's life.
glibc only; elsewhere (macOS, musl, Windows) everything here does nothing.
`RECOGNIZE_KEEP_FREED_MEMORY=0` (or false / no / off) turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading

__all__ = ["ENV", "enabled", "keep_freed_memory", "trim", "worker_env"]

#: set to 0 (false, no, off) to leave glibc's malloc settings as they are
ENV = "RECOGNIZE_KEEP_FREED_MEMORY"
#: mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
#: freed memory at the heap's top above this goes back to the system at once (1 GiB: more than any
#: single activation of the built-in models; `trim()` hands back the rest)
TRIM_THRESHOLD = 1 << 30

_lock = threading.Lock()
_state: bool | None = None  # None: not tried yet; then whether the settings are in force


def enabled() -> bool:
    """Whether freed memory is to be kept (`RECOGNIZE_KEEP_FREED_MEMORY`, default on) where glibc runs."""
    return (os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")
            and _glibc() is not None)


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


def trim() -> None:
    """Hand the heap's free pages back to the system (`malloc_trim(0)`); nothing off glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def worker_env() -> dict[str, str]:
    """Environment for worker processes this one starts (Ray): their threads share one heap from the
    process's first allocation, which a `mallopt` call inside them would come too late for."""
    return {"MALLOC_ARENA_MAX": "1"} if enabled() else {}


def _apply() -> bool:
    if not enabled():
        return False
    libc = _glibc()
    # mallopt returns 1 on success; the trim threshold first, so that turning mmap off never runs
    # with the default 128 KiB threshold (which would give large freed blocks straight back)
    applied = bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(libc.mallopt(_M_MMAP_MAX, 0))
    libc.mallopt(_M_ARENA_MAX, 1)  # threads that have not allocated yet share the main heap
    return applied


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library if this is Linux with glibc (`gnu_get_libc_version`): mallopt's parameters are glibc's."""
    if not sys.platform.startswith("linux"):
        return None
    try:  # find_library needs ldconfig or a compiler, which slim containers lack
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not all(hasattr(libc, symbol) for symbol in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc
