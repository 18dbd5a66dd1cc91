"""Ray workers keep freed memory for reuse on their actor threads too (`recognize.heap.worker_env`).

A Ray actor's methods run on threads that Ray starts before any of our code runs in the worker, and glibc
gives such threads their own arenas, where blocks above 64 MiB are mmapped whatever `mallopt` says. The
engine starts Ray's workers with `MALLOC_ARENA_MAX=1`; this checks, with glibc's own count of mmapped
bytes, that a threaded actor's large blocks then come from the heap."""

from __future__ import annotations

import platform
import sys

import pytest

ray = pytest.importorskip("ray")

from recognize import heap
from recognize.engines.ray_engine import RayEngine

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                 reason="glibc's malloc")]


@ray.remote(max_concurrency=2)  # threaded, like the engine's StageActor
class _Probe:
    def mmapped_while_alive(self) -> int:
        """Bytes glibc holds in mmapped blocks while three 64 MiB tensors are alive, after a warm-up."""
        import ctypes

        import torch

        from recognize import heap as worker_heap

        class Mallinfo2(ctypes.Structure):
            _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                             "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = Mallinfo2
        worker_heap.keep_freed_memory()  # what apply_stages does in the actor's thread
        n = (64 << 20) // 4
        for _ in range(2):
            blocks = [torch.ones(n) for _ in range(3)]
            mmapped = libc.mallinfo2().hblkhd
            del blocks
        return mmapped


def test_a_threaded_ray_worker_takes_large_blocks_from_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(heap.ENV, raising=False)
    if ray.is_initialized():
        ray.shutdown()
    RayEngine().start()  # the engine's own ray.init, with its workers' environment
    try:
        mmapped = ray.get(_Probe.remote().mmapped_while_alive.remote(), timeout=120)
    finally:
        ray.shutdown()
    assert mmapped < 64 << 20, mmapped
