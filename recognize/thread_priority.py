"""Background threads (decoding the next images, loading the next models) yield the cores to compute.

Why: on a machine with few cores, torch's compute threads use every core while a stage runs; a
background thread started beside them (the JPEG decoding of `recognize.prefetch`, the model loading of
`recognize.engines.background_load`) takes a core from one of them, and the other waits for it at the
next barrier: in the benchmark's chain RAM++ took 2.37 s per photo against 1.17 s alone
(`benchmarks/results.md`), its first batch sharing the two cores with the loading of Grounding DINO and
SAM. Here such a thread lowers its own scheduling priority (Linux `nice`, per thread), so it runs mostly
when a compute thread waits, and still gets the cores when nothing else needs them. Measured on the
benchmark's chain (4 photos, 3 alternating pairs, 2 cores): RAM++ 6.95 -> 5.24 s in all, the whole run
95.4 -> 93.0 s (within the runs' spread), a later stage waiting 0-0.6 s for its model where it waited
none. Where lowering is not possible (another OS, a sandbox that forbids it) nothing changes.
"""

from __future__ import annotations

import os
import threading

__all__ = ["BACKGROUND_NICE", "lower_this_thread"]

#: how much lower than the process a background thread runs (Linux nice increment, 0-19)
BACKGROUND_NICE = 10


def lower_this_thread(increment: int = BACKGROUND_NICE) -> bool:
    """Lower the calling thread's scheduling priority by `increment`; True if it was lowered."""
    if increment <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + increment))
        return True
    except OSError:
        return False
