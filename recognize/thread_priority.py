"""Background threads (decoding the next images, loading the next models) yield the cores to compute.

Why: on a machine with few cores, torch's compute threads use every core while a stage runs; a
background thread started beside them (the JPEG decoding of `recognize.prefetch`, the model loading of
`recognize.engines.background_load`) takes a core from one of them, and the other waits for it at the
next barrier, so a stage's first batch ran ~2x slower than the stage alone (RAM++ in the chain,
`benchmarks/results.md`). Here such a thread lowers its own scheduling priority (Linux `nice`, per
thread), so it runs mostly when a compute thread waits, and still gets the cores when nothing else
needs them. Where that is not possible (another OS, a sandbox that forbids it) nothing changes.
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
