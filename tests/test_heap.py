"""`recognize.heap`: freed activation memory is reused without page faults, and handed back between stages.

Each check runs in a fresh interpreter: malloc's settings are process-wide and cannot be undone by
`keep_freed_memory()` itself, so they must not leak into the other tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

#: a "layer" allocates, writes and frees 64 MiB blocks (far above glibc's largest mmap threshold, 32
#: MiB), as a model's layers do with their large activations; faults are counted over four layers
#: after two warm-up ones, then the freed memory is handed back as between a chain's stages
_PROBE = textwrap.dedent("""
    import json, resource
    import torch
    from recognize import heap, resident_weights
    {setup}
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096
    n = (64 << 20) // 4
    def layer():
        a = torch.empty(n); a.fill_(1.0)
        b = torch.empty(n); b.fill_(2.0)
        c = torch.relu(a + b)
        del a, b, c
    layer(); layer()
    before = faults()
    for _ in range(4):
        layer()
    refaults = faults() - before
    rss_kept = rss()
    resident_weights.release()
    print(json.dumps({{"on": heap._state, "refaults": refaults, "rss_kept": rss_kept, "rss_released": rss()}}))
""")
#: pages written per layer: four 64 MiB blocks (a, b, a + b, relu) of 4 KiB pages
_LAYER_PAGES = 4 * (64 << 20) // 4096


def _probe(setup: str, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(setup=setup)], capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_large_blocks_are_reused_without_page_faults_and_trimmed_by_release() -> None:
    kept = _probe("assert heap.keep_freed_memory()")
    assert kept["on"] is True
    # glibc's default faults every page of every block again in every layer (next test); kept, a block
    # whose freed neighbour did not fit faults now and then (seen: one block in four layers, or none)
    assert kept["refaults"] < _LAYER_PAGES, kept
    # the freed blocks stayed resident for reuse; release() (between a chain's stages) hands them back
    assert kept["rss_kept"] - kept["rss_released"] > 128 << 20, kept


def test_without_it_every_large_allocation_faults_again() -> None:
    """The behaviour it exists to avoid (glibc's default): a guard that the probe tells the two apart."""
    plain = _probe("")
    assert plain["on"] is None
    assert plain["refaults"] > 3 * _LAYER_PAGES, plain


def test_the_opt_out_leaves_malloc_alone() -> None:
    result = _probe("assert heap.keep_freed_memory() is False", env={"RECOGNIZE_KEEP_FREED_MEMORY": "0"})
    assert result["on"] is False
    assert result["refaults"] > 3 * _LAYER_PAGES, result


def test_running_stages_turns_it_on() -> None:
    """Every engine runs stages through `apply_stages`: a Pipeline call is enough."""
    script = textwrap.dedent("""
        import numpy as np
        from recognize import heap
        from recognize.pipeline import Pipeline
        from recognize.stage import Stage

        class Touch(Stage):
            name = "touch"
            kind = "filter"
            def process(self, frames):
                return frames

        assert heap._state is None
        Pipeline([Touch()])(np.zeros((8, 8, 3), dtype=np.uint8))
        print(heap._state)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "True"
