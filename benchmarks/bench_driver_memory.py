"""Driver memory of `recognize run` against the number of inputs: does the run's bookkeeping grow?

    python benchmarks/bench_driver_memory.py --inputs 1000 100000 1000000 [--baseline /path/to/old/checkout]

What is measured: the peak resident memory (ru_maxrss, from `os.wait4`) of a `recognize run` CLI
process, for a fresh run and for a resume of the same folder with every image done, at each input
count; growth per input is the slope between the smallest and each larger count. The images cost
no pixels and no model: the recipe has no stage and one `shards` output (no per-image files), and
the N inputs are hard links to a few 8x8 PNGs (distinct paths, so none is deduplicated; one inode per
50,000 links, so 10^6 inputs take folder entries, not 10^6 files' data), listed in a JSONL manifest with
one row per image. So what grows with N is the driver's own bookkeeping: the input list, the name
and claim checks, the done journal, the list of finished images.

`--baseline DIR` runs the same measurements with another checkout's `recognize` package first on
PYTHONPATH (e.g. `git archive <commit> | tar -x -C DIR`), side by side in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_machine import machine, machine_line

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "recipe: 1\noutputs:\n  - use: shards\n    with: {frames_per_shard: 100000}\n"


def make_inputs(folder: Path, count: int) -> Path:
    """`count` hard links to one PNG, 1000 per sub-folder, and a JSONL manifest naming them."""
    manifest = folder / f"manifest-{count}.jsonl"
    if manifest.exists():
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "partial.jsonl").open("w", encoding="utf-8") as rows:
        for i in range(count):
            sub = folder / "links" / f"d{i // 1000:05d}"
            link = sub / f"i{i:07d}.png"
            if not link.exists():
                sub.mkdir(parents=True, exist_ok=True)
                os.link(_seed(folder, i // 50_000), link)
            rows.write(json.dumps({"path": link.relative_to(folder).as_posix()}) + "\n")
    (folder / "partial.jsonl").rename(manifest)
    return manifest


def _seed(folder: Path, number: int) -> Path:
    """One 8x8 PNG per 50,000 links (a file system caps the links to one file: ext4 at 65,000)."""
    seed = folder / f"seed-{number:04d}.png"
    if not seed.exists():
        from PIL import Image

        Image.new("RGB", (8, 8), (90, 90, 90)).save(seed)
    return seed


def run_cli(code: Path, recipe: Path, manifest: Path, out: Path) -> dict[str, float]:
    """One `recognize run` in a child process: its peak RSS (MiB) and wall time."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]))
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "recognize", "run", str(recipe), str(manifest), "-o", str(out),
                              "--quiet"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read() if child.stderr else b""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"recognize run failed ({code}): {stderr.decode(errors='replace')[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    return {"peak_mib": usage.ru_maxrss / 1024, "seconds": seconds, **summary["counts"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-driver-memory"))
    parser.add_argument("--baseline", type=Path, help="another checkout to measure side by side")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout measured first (default: this one)")
    parser.add_argument("--label", default="this checkout", help="its name in the table")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    recipe = args.work / "shards_only.yaml"
    recipe.write_text(RECIPE)
    counts = sorted(args.inputs)
    manifests = {n: make_inputs(args.work / "images", n) for n in counts}
    versions = [(args.label, args.code.resolve())] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    rows = []
    for label, code in versions:
        for n in counts:
            out = args.work / f"out-{label.replace(' ', '_')}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            fresh = run_cli(code, recipe, manifests[n], out)
            print(json.dumps({"version": label, "inputs": n, "fresh": fresh}), file=sys.stderr, flush=True)
            resume = run_cli(code, recipe, manifests[n], out)
            assert (fresh["processed"], resume["skipped"]) == (n, n), (fresh, resume)
            rows.append({"version": label, "inputs": n, "fresh": fresh, "resume": resume})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    print(f"\nMachine: {machine_line()}\nCommand: python benchmarks/bench_driver_memory.py {' '.join(sys.argv[1:])}\n")
    print("| version | inputs | fresh: peak RSS MiB | fresh: wall s | resume: peak RSS MiB | resume: wall s "
          "| growth per input vs smallest, fresh / resume (bytes) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        first = next(r for r in rows if r["version"] == row["version"])
        extra = row["inputs"] - first["inputs"]
        slope = [(row[k]["peak_mib"] - first[k]["peak_mib"]) * 2**20 / extra if extra else None for k in ("fresh", "resume")]
        growth = " / ".join("-" if s is None else f"{s:.0f}" for s in slope)
        print(f"| {row['version']} | {row['inputs']:,} | {row['fresh']['peak_mib']:.0f} | {row['fresh']['seconds']:.1f} "
              f"| {row['resume']['peak_mib']:.0f} | {row['resume']['seconds']:.1f} | {growth} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
