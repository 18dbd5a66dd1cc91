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


def _peak_before_first_image(folder, count: int) -> int:
    """Python's peak allocations while `recognize run` prepares `count` inputs (URLs in a list file:
    nothing to stat, nothing fetched), all of which failed in an earlier run into the same folder
    (a network outage: one journal line each): expanding and naming them, checking what they would
    write, finding which are done. The run stops at `engine.load`, before any image."""
    listing = folder / "urls.txt"
    out = folder / "out"
    pipeline = Pipeline([NeedsWeights()], [plugins.get_stage("json")()])
    recipe = recipe_of(pipeline)
    out.mkdir(parents=True)
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
    return peak


@pytest.mark.slow
def test_the_driver_holds_no_per_input_bookkeeping(tmp_path):
    """From 5,000 to 50,000 inputs, Python's peak allocations before the first image grow by less
    than 100 bytes an input; the runner that held the inputs, claims and journal records in lists
    and dicts grew by ~1.7 KB an input (~75 MB here). The growth, not the peak, is compared, so
    what the process already holds or imports on the first run (it differs between running this
    file alone and the whole suite) cancels out; the small run goes first and takes those costs.
    sqlite's page caches are outside tracemalloc's view; they are bounded by their `cache_size`
    (benchmarks/bench_driver_memory.py measures the whole process)."""
    small, large = 5_000, 50_000
    small_peak = _peak_before_first_image(tmp_path / "small", small)
    large_peak = _peak_before_first_image(tmp_path / "large", large)
    per_input = (large_peak - small_peak) / (large - small)
    assert per_input < 100, (f"{per_input:.0f} bytes an input (peaks {small_peak / 2**20:.1f} MB for {small}, "
                             f"{large_peak / 2**20:.1f} MB for {large} inputs)")
