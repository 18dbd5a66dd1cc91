"""`recognize run`'s driver memory does not grow with the number of inputs (issue 14).

Not a timed test and not a ratio: a bound that the runner's bookkeeping in lists and dicts (up to
the commit before `recognize.run_inputs`) cannot meet, so it uses only what both versions have.
Each measurement runs in a fresh interpreter: inside the test process, what earlier tests left
behind (interned strings, caches, warning registries) moved the peak by megabytes from one
suite run to the next, which says nothing about the runner.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from recognize import plugins
from recognize.pipeline import Pipeline
from recognize.runner import fingerprint, recipe_of, write_manifest

#: run in a fresh interpreter: everything `recognize run` does before its first image, traced
MEASURE = r'''
import sys, tracemalloc
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

    def load(self):
        raise ModelFileError("needs_weights.safetensors: not found (a test stage that never has its weights)")

    def process(self, frames):
        return frames


pipeline = Pipeline([NeedsWeights()], [plugins.get_stage("json")()])
tracemalloc.start()
try:
    run_to_folder(pipeline, [sys.argv[1]], sys.argv[2], quiet=True)
except ModelFileError:
    pass
else:
    raise SystemExit("the run did not stop at the missing weights")
print(tracemalloc.get_traced_memory()[1])
'''


def _peak_before_first_image(folder, count: int) -> int:
    """Python's peak allocations while `recognize run` prepares `count` inputs (URLs in a list file:
    nothing to stat, nothing fetched), all of which failed in an earlier run into the same folder
    (a network outage: one journal line each): expanding and naming them, checking what they would
    write, finding which are done. The run stops at `engine.load`, before any image."""
    listing = folder / "urls.txt"
    out = folder / "out"
    out.mkdir(parents=True)
    # the manifest the measured run's recipe writes: same stages, same fingerprint
    measured = Pipeline([_needs_weights_stage()], [plugins.get_stage("json")()])
    recipe = recipe_of(measured)
    write_manifest(measured, recipe, out)
    (out / ".recognize").mkdir()
    with listing.open("w") as lines, (out / ".recognize" / "done.jsonl").open("w") as journal:
        for i in range(count):
            url = f"http://images.example.com/shard{i // 1000:03d}/img{i:06d}.jpg"
            lines.write(url + "\n")
            journal.write(json.dumps({"name": url.removeprefix("http://"), "source": url, "recipe": fingerprint(recipe),
                                      "error": f"{url}: cannot read (ClientConnectorError: network unreachable)"}) + "\n")
    done = subprocess.run([sys.executable, "-c", MEASURE, str(listing), str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def _needs_weights_stage():
    """The measured run's stage as its recipe describes it (loading never happens here)."""
    from recognize.stage import Stage

    class NeedsWeights(Stage):
        name = "needs_weights"
        kind = "tagger"

        def process(self, frames):
            return frames

    return NeedsWeights()


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_driver_holds_no_per_input_bookkeeping(tmp_path):
    """From 5,000 to 50,000 inputs, Python's peak allocations before the first image grow by less
    than 100 bytes an input; the runner that held the inputs, claims and journal records in lists
    and dicts grew by ~1.7 KB an input (~75 MB here). sqlite's page caches are outside
    tracemalloc's view; they are bounded by their `cache_size` (benchmarks/bench_driver_memory.py
    measures the whole process)."""
    small, large = 5_000, 50_000
    small_peak = _peak_before_first_image(tmp_path / "small", small)
    large_peak = _peak_before_first_image(tmp_path / "large", large)
    per_input = (large_peak - small_peak) / (large - small)
    assert per_input < 100, (f"{per_input:.0f} bytes an input (peaks {small_peak / 2**20:.1f} MB for {small}, "
                             f"{large_peak / 2**20:.1f} MB for {large} inputs)")
