"""`recognize run`'s driver memory does not grow with the number of inputs (issue 14).

Not a timed test and not a ratio: a bound that the runner's bookkeeping in lists and dicts (up to
the commit before `recognize.run_inputs`) cannot meet, so it uses only what both versions have.
"""

from __future__ import annotations

import json
import tracemalloc

import pytest

from recognize import plugins
from recognize.errors import ModelFileError
from recognize.pipeline import Pipeline
from recognize.runner import fingerprint, recipe_of, run_to_folder, write_manifest
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
    """50,000 inputs (URLs in a list file: nothing to stat, nothing fetched), all of which failed in
    an earlier run into the same folder (a network outage: one journal line each), through
    everything `recognize run` does before its first image: expanding and naming them, checking
    what they would write, finding which are done. Python's allocations at the peak stay under
    10 MB (200 bytes an input); the runner that held the inputs, claims and journal records in
    lists and dicts took ~1 KB an input (~50 MB here). sqlite's page caches are outside
    tracemalloc's view; they are bounded by their `cache_size` (benchmarks/bench_driver_memory.py
    measures the whole process)."""
    count = 50_000
    listing = tmp_path / "urls.txt"
    out = tmp_path / "out"
    pipeline = Pipeline([NeedsWeights()], [plugins.get_stage("json")()])
    recipe = recipe_of(pipeline)
    out.mkdir()
    write_manifest(pipeline, recipe, out)
    (out / ".recognize").mkdir()
    with listing.open("w") as lines, (out / ".recognize" / "done.jsonl").open("w") as journal:
        for i in range(count):
            url = f"http://images.example.com/shard{i // 1000:03d}/img{i:06d}.jpg"
            lines.write(url + "\n")
            journal.write(json.dumps({"name": url.removeprefix("http://"), "source": url, "recipe": fingerprint(recipe),
                                      "error": f"{url}: cannot read (ClientConnectorError: network unreachable)"}) + "\n")
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="never has its weights"):
            run_to_folder(pipeline, [listing], out, quiet=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"{peak / 2**20:.1f} MB at the peak for {count} inputs"
