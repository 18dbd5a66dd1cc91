"""Start-up time of the commands that only register plugins, for two source trees side by side.

    python benchmarks/bench_startup.py --before /path/to/old/checkout --after . --runs 5

Each command runs in a fresh interpreter with the tree (and its two plugin folders) first on
PYTHONPATH, alternating before/after so a machine that gets busier slows both alike. Prints the
median wall time per command and tree, their ratio, and which heavy libraries each tree imported.
A script, not a test: the suite asserts what is imported (tests/test_plugins.py), never how fast.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_machine import machine_line

COMMANDS = {
    "recognize --help": ["-m", "recognize", "--help"],
    "recognize stages": ["-m", "recognize", "stages"],
    "recognize plugins": ["-m", "recognize", "plugins"],
    "recipe validation": ["-c", "from recognize.recipe import load_recipe; load_recipe('recipes/tag_ground_segment.yaml')"],
}
HEAVY = ("torch", "torchvision", "transformers", "segment_anything", "timm", "open_clip")


def env_for(tree: Path) -> dict[str, str]:
    paths = [tree, tree / "plugins" / "recognize-grounding-dino", tree / "plugins" / "recognize-sam"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)))
    # the project's own plugins only: a third-party plugin installed here would be measured too
    env["RECOGNIZE_LOAD_PLUGINS"] = "recognize-grounding-dino,recognize-sam"
    env.pop("RECOGNIZE_PLUGINS", None)
    return env


def timed(tree: Path, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env_for(tree), cwd=tree, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def heavy_imports(tree: Path) -> list[str]:
    code = ("import sys; from recognize import plugins; plugins.stages(); plugins.model_cards(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env=env_for(tree), cwd=tree, check=True, capture_output=True,
                         text=True, timeout=300).stdout.strip()
    return out.split(",") if out else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    print(f"Machine: {machine_line()}; {args.runs} runs each, median wall seconds\n")
    print("| command | before | after | after / before |\n|---|---|---|---|")
    for label, command in COMMANDS.items():
        times: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                times[name].append(timed(tree, command))
        before, after = (statistics.median(times[name]) for name in trees)
        print(f"| `{label}` | {before:.2f} | {after:.2f} | {after / before:.2f} |")
    for name, tree in trees.items():
        print(f"\nheavy libraries imported by registration ({name}): {', '.join(heavy_imports(tree)) or 'none'}")


if __name__ == "__main__":
    main()
