"""Run a recipe through the real `recognize run` command, from a plugin's tests.

A plugin's end-to-end test wants what a user gets: the recipe parsed from a file, the stages found
through the entry points, the files written. `run_recipe` writes the recipe (JSON is YAML), runs
`python -m recognize run` in a subprocess, offline and with a private model cache, and returns the
result with a reader for the frames it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recognize.frame import Frame


@dataclass
class RecipeRun:
    """What `recognize run` did: its exit code and output, and the run folder it wrote."""

    returncode: int
    stdout: str
    stderr: str
    out_dir: Path

    def frame(self, name: str) -> Frame:
        """The result of the image named `name` (as in `OUT/frames/<name>.json`, extension included)."""
        return Frame.from_json((self.out_dir / "frames" / f"{name}.json").read_text(encoding="utf-8"))


def run_recipe(recipe: dict[str, Any] | str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]],
               out_dir: str | os.PathLike[str], *, args: Sequence[str] = ("-q",), env: dict[str, str] | None = None,
               timeout: float = 900) -> RecipeRun:
    """Run `recipe` (a dict written beside `out_dir`, or a recipe file) on `inputs` into `out_dir`.

    The environment is this process's plus `RECOGNIZE_OFFLINE=1` and a `RECOGNIZE_HOME` of its own
    beside `out_dir` (nothing is downloaded, nothing of the user's cache is touched), then `env`.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(recipe, dict):
        path = out.parent / f"{out.name}.recipe.yaml"
        path.write_text(json.dumps(recipe), encoding="utf-8")  # JSON is YAML
    else:
        path = Path(recipe)
    full_env = {**os.environ, "RECOGNIZE_OFFLINE": "1", "RECOGNIZE_HOME": str(out.parent / f"{out.name}.home"),
                **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "recognize", "run", str(path), *map(str, inputs), "-o", str(out), *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, check=False,
    )
    return RecipeRun(result.returncode, result.stdout, result.stderr, out)
