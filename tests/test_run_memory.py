"""`recognize run`'s driver memory does not grow with the number of inputs (issue 14).

Not a timed test and not a ratio: a bound that the runner's bookkeeping in lists and dicts (up to
the commit before `recognize.run_inputs`) cannot meet, so it uses only what both versions have.
"""

from __future__ import annotations

import tracemalloc

import pytest

from recognize import plugins
from recognize.errors import ModelFileError
from recognize.pipeline import Pipeline
from recognize.runner import run_to_folder
from recognize.stage import Stage


class NeedsWeights(Stage):
    """A tagger whose weights are missing: the run stops at `engine.load`, after every check of the
    inputs (listing, names, claims, what is done) and before any image."""

    name = "needs_weights"
    kind = "tagger"

    def load(self) -> None:
        raise ModelFileError("needs_weights.safetensors: not found (a test stage that never has its weights)")

    def process(self, frames):
        return frames


@pytest.mark.slow
def test_the_driver_holds_no_per_input_bookkeeping(tmp_path):
    """50,000 inputs (URLs in a list file: nothing to stat, nothing fetched) through everything
    `recognize run` does before its first image: expanding and naming them, checking what they
    would write, finding which are done. Python's allocations at the peak stay under 10 MB (200 bytes
    an input); holding them as lists and dicts, as the runner did, took ~1 KB an input (~50 MB here).
    sqlite's own page cache is outside tracemalloc's view and bounded by its `cache_size` (16 MB)."""
    count = 50_000
    listing = tmp_path / "urls.txt"
    with listing.open("w") as lines:
        for i in range(count):
            lines.write(f"http://images.example.com/shard{i // 1000:03d}/img{i:06d}.jpg\n")
    pipeline = Pipeline([NeedsWeights()], [plugins.get_stage("json")()])
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="never has its weights"):
            run_to_folder(pipeline, [listing], tmp_path / "out", quiet=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"{peak / 2**20:.1f} MB at the peak for {count} inputs"
