"""Background threads (decoding the next images, loading the next models) yield the cores to compute.

Why: on a machine with few cores, torch's compute threads use every core while a stage runs; a
background thread started beside them (the JPEG decoding of `recognize.prefetch`, the model loading of
`recognize.engines.background_load`) takes a core from one of them, and the other waits for it at the
next barrier: in the benchmark's chain RAM++ took 2.37 s per photo against 1.17 s alone
(the full run of 2026-12-02 06:13 UTC), its first batch sharing the two cores with the loading of Grounding DINO and
SAM. Here such a thread lowers its own scheduling priority (Linux `nice`, per thread), so it runs mostly
when a compute thread waits, and still gets the cores when nothing else needs them. Measured on the
benchmark's chain (4 photos, 3 alternating pairs, 2 cores): RAM++ 6.95 -> 5.24 s in all, the whole run
95.4 -> 93.0 s (within the runs' spread); in one pair a later stage waited 0.6 s for its model where it
had waited none.

Linux only: elsewhere `setpriority` takes a process id, not a thread's, so nothing is done. Where Linux
refuses (a sandbox) nothing changes either. What a lowered thread starts keeps its priority (a
subprocess, a thread pool first created there); the built-in stages start neither while loading, and
torch gives each thread its own intra-op pool, so the stages' compute threads are not lowered. While a
stage waits for a lowered thread (a model still loading, an image still decoding), that work runs at the
lower priority against other processes on a shared machine.
"""

from __future__ import annotations

import os
import sys
import threading

__all__ = ["BACKGROUND_NICE", "lower_this_thread"]

#: how much lower than the process a background thread runs (Linux nice increment, 0-19)
BACKGROUND_NICE = 10
#: the lowest priority Linux has
LOWEST = 19


def lower_this_thread(increment: int = BACKGROUND_NICE) -> bool:
    """Lower the calling thread's scheduling priority by `increment` (at most to the lowest); True if it
    was lowered. Never raises: a background thread must go on with its work whatever happens here."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if current >= LOWEST:
            return False
        os.setpriority(os.PRIO_PROCESS, tid, min(LOWEST, current + increment))
        return True
    except Exception:  # noqa: BLE001 - a refused or missing call leaves the thread as it was
        return False
