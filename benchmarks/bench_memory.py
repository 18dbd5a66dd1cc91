"""Peak memory of `recognize run` as the dataset grows: 100 vs 1000 images, each with a mask.

The runner must be bounded by the batch, not the dataset: it writes each image's results and
drops them; dataset-level outputs (`coco`) read the frames back from disk one at a time. So the
peak RSS of a 1000-image run should be that of a 100-image run plus the COCO file's own data
(RLE strings), not plus 1000 decoded masks.

Each run is a fresh `python -m recognize run` subprocess (peak RSS read with `os.wait4`), over
copies of one synthetic image, with a benchmark stage (`bench_disc_mask`, defined here and loaded
with RECOGNIZE_PLUGINS) that adds one tag and one region with a full-size disc mask per image.
`--baseline PATH` runs the same commands with another checkout first on PYTHONPATH, side by side.

    python benchmarks/bench_memory.py                  # prints the table
    python benchmarks/bench_memory.py --write          # also updates its section of results_standalone.md
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_machine import machine_line

import recognize
from recognize import Frame, Region, Stage, Tag

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTION = "## Memory: run folder, 100 vs 1000 images with masks"


class DiscMask(Stage):
    """One tag and one region per image, the region with a full-size disc mask (no model)."""

    name = "bench_disc_mask"
    kind = "segmenter"

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            h, w = frame.image.shape[:2]
            yy, xx = np.ogrid[:h, :w]
            mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
            frame.tags.append(Tag(name="disc", score=1.0, source=self.name))
            frame.regions.append(Region(box=(w / 6, h / 6, 5 * w / 6, 5 * h / 6), score=1.0, tag="disc",
                                        mask=mask, source=self.name))
        return frames


@recognize.hookimpl
def register_stages(register):
    register(DiscMask)


RECIPES = {
    "per-image outputs (json)": "outputs: []\n",
    "with a dataset output (coco)": "outputs:\n  - use: coco\n",
}


def make_images(folder: Path, count: int, size: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = folder / "img00000.png"
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(first)
    for i in range(1, count):
        os.link(first, folder / f"img{i:05d}.png")  # same bytes, distinct files: cheap to make


def peak_rss_mib(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of one subprocess (run in `cwd`, so `-m recognize` finds PYTHONPATH's)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {err[-2000:]}")
    return usage.ru_maxrss / 1024, seconds


def run(counts: list[int], size: int, batch: int, baseline: str | None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp_path = Path(tmp)
        for count in counts:
            make_images(tmp_path / f"in{count}", count, size)
        versions = [("this checkout", str(REPO))] + ([("baseline", baseline)] if baseline else [])
        for version, root in versions:
            for label, outputs in RECIPES.items():
                recipe = tmp_path / "recipe.yaml"
                recipe.write_text(f"recipe: 1\nsettings: {{batch_size: {batch}}}\n"
                                  f"stages:\n  - use: bench_disc_mask\n{outputs}")
                plugins = sorted(str(p) for p in (Path(root) / "plugins").glob("*") if p.is_dir())
                env = {**os.environ, "RECOGNIZE_PLUGINS": "bench_memory",
                       "PYTHONPATH": os.pathsep.join([root, *plugins, str(HERE), os.environ.get("PYTHONPATH", "")])}
                for count in counts:
                    out = tmp_path / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    rss, seconds = peak_rss_mib([sys.executable, "-m", "recognize", "run", str(recipe),
                                                 str(tmp_path / f"in{count}"), "-o", str(out), "-q"], env, tmp_path)
                    rows.append({"version": version, "outputs": label, "images": count, "peak_rss_mib": rss,
                                 "seconds": seconds})
                    print(f"{version:14} {label:30} {count:5} images: peak RSS {rss:7.1f} MiB, {seconds:6.1f} s",
                          flush=True)
    return rows


def report(rows: list[dict], counts: list[int], size: int, batch: int) -> str:
    low, high = counts[0], counts[-1]
    lines = [
        SECTION,
        "",
        (f"`python benchmarks/bench_memory.py` ({time.strftime('%Y-%m-%d')}): `recognize run` in a fresh process "
         f"per row, {size}x{size} images, one disc mask per image ({size * size / 2**20:.2f} MiB as booleans), "
         f"batch {batch}. Machine: {machine_line()}."),
        "",
        (f"| version | outputs | peak RSS MiB, {low} images | peak RSS MiB, {high} images | growth MiB | "
         "growth per extra image KiB |"),
        "|---|---|---:|---:|---:|---:|",
    ]
    keyed = {(r["version"], r["outputs"], r["images"]): r["peak_rss_mib"] for r in rows}
    for version, label in dict.fromkeys((r["version"], r["outputs"]) for r in rows):
        a, b = keyed[(version, label, low)], keyed[(version, label, high)]
        per = (b - a) * 1024 / (high - low)
        lines.append(f"| {version} | {label} | {a:.0f} | {b:.0f} | {b - a:+.0f} | {per:.1f} |")
    lines += ["", ("Growth per extra image should be far below the size of one mask: the runner keeps no frame "
                   "after writing it, and `coco` keeps RLE strings, not masks."), ""]
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    body = path.read_text(encoding="utf-8") if path.is_file() else "# recognize benchmarks\n"
    pattern = re.compile(re.escape(SECTION) + r".*?(?=\n## |\Z)", re.DOTALL)
    body = pattern.sub(lambda _: text.rstrip("\n"), body) if pattern.search(body) else body.rstrip("\n") + "\n\n" + text
    path.write_text(body.rstrip("\n") + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--baseline", help="another checkout of recognize to measure side by side")
    parser.add_argument("--write", action="store_true", help="update this benchmark's section of results_standalone.md")
    args = parser.parse_args()
    rows = run(sorted(args.counts), args.size, args.batch_size, args.baseline)
    text = report(rows, sorted(args.counts), args.size, args.batch_size)
    print(text)
    if args.write:
        write_section(text, HERE / "results_standalone.md")


if __name__ == "__main__":
    main()
