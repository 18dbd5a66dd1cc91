"""`recognize.heap`: freed activation memory is reused (main thread and threads started after it), kept
between a chain's stages (`resident_weights.release()` leaves it), and handed back by `trim()` at the end
of a run and on request.

Each check runs in a fresh interpreter: malloc's settings are process-wide and cannot be undone, so they
must not leak into the other tests. The mechanism is read from glibc itself (`mallinfo2().hblkhd`: bytes
held in mmapped blocks, which `free` unmaps), independent of page size and transparent huge pages; the
page faults it saves are checked too where pages are faulted 4 KiB at a time."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recognize import heap

pytestmark = [pytest.mark.subprocess,
              pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                 reason="glibc's malloc")]

#: a "layer" allocates, writes and frees 64 MiB blocks (far above glibc's largest mmap threshold, 32 MiB),
#: as a model's layers do with their large activations; four of them are measured after two warm-up ones
_PROBE = textwrap.dedent("""
    import ctypes, json, os, resource, threading
    from recognize import heap
    {setup}
    import torch  # after the setup, as the CLI does: before any thread of torch's or ours exists
    from recognize import resident_weights

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = Mallinfo2

    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    n = (64 << 20) // 4
    found = {{"mmapped": 0}}
    def layer():
        a = torch.empty(n); a.fill_(1.0)
        b = torch.empty(n); b.fill_(2.0)
        c = torch.relu(a + b)
        found["mmapped"] = max(found["mmapped"], libc.mallinfo2().hblkhd)  # while a, b, c are alive
        del a, b, c
    def measure():
        layer(); layer()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(4):
            layer()
        found["refaults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    {run}
    found["rss_kept"] = rss()
    {release}
    found["rss_released"] = rss()
    found["on"] = heap._state
    print(json.dumps(found))
""")
_IN_MAIN = "measure()"
_IN_THREAD = "worker = threading.Thread(target=measure); worker.start(); worker.join()"
_MiB = 1 << 20


def _probe(setup: str, run: str = _IN_MAIN, release: str = "heap.trim()",
           env: dict[str, str] | None = None) -> dict:
    clean = {k: v for k, v in os.environ.items() if k != heap.ENV and not k.startswith("MALLOC_")}
    script = _PROBE.format(setup=setup, run=run, release=release)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**clean, **(env or {})}, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _faults_are_4k_pages() -> bool:
    """Whether a fresh anonymous mapping is faulted one 4 KiB page at a time (not with THP always)."""
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    always = thp.exists() and "[always]" in thp.read_text()
    return os.sysconf("SC_PAGE_SIZE") == 4096 and not always


#: pages written per layer: four 64 MiB blocks (a, b, a + b, relu) of 4 KiB pages
_LAYER_PAGES = 4 * (64 << 20) // 4096


@pytest.mark.parametrize("where", [_IN_MAIN, _IN_THREAD], ids=["main thread", "thread started after"])
def test_freed_large_blocks_are_reused_and_handed_back_by_trim(where: str) -> None:
    kept = _probe("assert heap.keep_freed_memory()", run=where)
    assert kept["on"] is True
    assert kept["mmapped"] < 64 * _MiB, kept  # the blocks came from the heap, not from mmap
    if _faults_are_4k_pages():
        # glibc's default faults every page of every block again in every layer (4 layers' pages: next
        # test). Kept, this synthetic loop still faults some blocks: torch asks for 64-byte aligned
        # blocks, and glibc's posix_memalign needs a free chunk a little larger than the block, so a
        # freed block is reused only once a neighbour is free too (seen: 0 to 2.5 layers' pages over
        # 4 layers; a real Grounding DINO forward faulted none, benchmarks/README.md)
        assert kept["refaults"] < 3 * _LAYER_PAGES, kept
    # the freed blocks stayed resident for reuse; trim() (at the end of a run) hands them back
    assert kept["rss_kept"] - kept["rss_released"] > 128 * _MiB, kept


@pytest.mark.parametrize("where", [_IN_MAIN, _IN_THREAD], ids=["main thread", "thread"])
def test_without_it_every_large_block_is_mmapped_and_faults_again(where: str) -> None:
    """The behaviour it exists to avoid (glibc's default): a guard that the probe tells the two apart."""
    plain = _probe("", run=where)
    assert plain["on"] is None
    assert plain["mmapped"] >= 3 * 64 * _MiB, plain
    if _faults_are_4k_pages():
        assert plain["refaults"] > 3 * _LAYER_PAGES, plain


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_the_opt_out_leaves_malloc_alone(value: str) -> None:
    result = _probe("assert heap.keep_freed_memory() is False", env={heap.ENV: value})
    assert result["on"] is False
    assert result["mmapped"] >= 3 * 64 * _MiB, result


@pytest.mark.parametrize("env", [{}, {"RECOGNIZE_KEEP_WEIGHTS_MAPPED": "1"}], ids=["default", "weights kept mapped"])
def test_release_between_stages_keeps_the_freed_memory_for_the_next_stage(env: dict[str, str]) -> None:
    """`resident_weights.release()` (between a chain's stages) unmaps weights, not the heap: the next stage
    allocates its activations from what this one freed instead of faulting them in again."""
    kept = _probe("assert heap.keep_freed_memory()", release="resident_weights.release()", env=env)
    assert kept["rss_kept"] - kept["rss_released"] < 16 * _MiB, kept
    trimmed = _probe("assert heap.keep_freed_memory()", release="resident_weights.release(); heap.trim()", env=env)
    assert trimmed["rss_kept"] - trimmed["rss_released"] > 128 * _MiB, trimmed  # the guard: there was memory to hand back


#: a stage whose process() allocates and frees four "layers" of 64 MiB blocks, and the process's RSS
_LAYERS_STAGE = textwrap.dedent("""
    import os
    import numpy as np
    import torch
    from recognize.pipeline import Pipeline
    from recognize.stage import Stage

    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    seen = {}
    class Layers(Stage):
        name = "layers"
        kind = "filter"
        def process(self, frames):
            for _ in range(4):
                a = torch.ones((64 << 20) // 4); b = a * 2; del a, b
            return frames
""")


def test_a_pipeline_call_turns_it_on_and_leaves_no_more_resident_than_before() -> None:
    """Every engine runs stages through `apply_stages` (on); the local engine trims at the end of a run."""
    script = _LAYERS_STAGE + textwrap.dedent("""
        from recognize import heap

        assert heap._state is None
        before = rss()
        Pipeline([Layers()])(np.zeros((8, 8, 3), dtype=np.uint8))
        print(heap._state, (rss() - before) >> 20)
    """)
    env = {k: v for k, v in os.environ.items() if k != heap.ENV}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    state, grown_mib = out.stdout.split()
    assert state == "True"
    assert int(grown_mib) < 64, grown_mib  # the two 64 MiB blocks kept during the call went back


def test_a_chains_next_stage_finds_the_memory_the_last_one_freed() -> None:
    """Between two stages of a `Pipeline` (chained: `apply_stages` calls `resident_weights.release()`) the
    freed 64 MiB blocks stay resident for the second stage; the end of the call hands them back."""
    script = _LAYERS_STAGE + textwrap.dedent("""
        import json

        class First(Layers):
            name = "first"
            def process(self, frames):
                frames = super().process(frames)
                seen["end_first"] = rss()
                return frames

        class Second(Stage):
            name = "second"
            kind = "filter"
            def process(self, frames):
                seen["start_second"] = rss()
                return frames

        before = rss()
        Pipeline([First(), Second()])(np.zeros((8, 8, 3), dtype=np.uint8))
        seen["grown"] = rss() - before
        print(json.dumps(seen))
    """)
    env = {k: v for k, v in os.environ.items() if k != heap.ENV}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["end_first"] - seen["start_second"] < 16 * _MiB, seen  # kept for the next stage (was: trimmed)
    assert seen["grown"] < 64 * _MiB, seen  # and handed back when the call ended


def test_worker_processes_get_one_arena(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray workers start with MALLOC_ARENA_MAX=1 (a mallopt inside them would come after their threads)."""
    monkeypatch.delenv(heap.ENV, raising=False)
    assert heap.worker_env() == {"MALLOC_ARENA_MAX": "1"}
    monkeypatch.setenv(heap.ENV, "no")
    assert heap.worker_env() == {}
