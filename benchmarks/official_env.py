"""A cached virtual environment holding the official Grounding DINO code, for the baseline.

rf-groundingdino (the official model code, as on the package index) builds only on transformers
4.x; recognize runs on the current transformers. So the baseline's Grounding DINO runs in a process
of its own, in a venv made with `--system-site-packages` (torch and the rest are reused, never
replaced: they are pinned to the running versions) plus rf-groundingdino and `transformers<5`.
Built once, under `$RECOGNIZE_OFFICIAL_ENV_HOME` (default `~/.cache/recognize/official-envs`), not
in the benchmark's model cache, so the quick-mode test reuses it; a lock keeps parallel runs apart. The same
mechanism as the plugin's test oracle (plugins/recognize-grounding-dino/tests/oracle_env.py on the
`kit` branch); the lead may fold the two into one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REQUIREMENTS = ("rf-groundingdino==0.3.0", "transformers>=4.40,<5")
KEEP = ("torch", "torchvision", "numpy")


class OfficialUnavailable(RuntimeError):
    """The environment could not be built (e.g. no package index reachable)."""


def _pins() -> list[str]:
    pins = []
    for name in KEEP:
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{name}=={metadata.version(name)}")
    return pins


def env_dir() -> Path:
    key = json.dumps([sys.version, sys.prefix, REQUIREMENTS, _pins()]).encode()
    home = os.environ.get("RECOGNIZE_OFFICIAL_ENV_HOME") or Path.home() / ".cache" / "recognize" / "official-envs"
    return Path(home) / f"groundingdino-{hashlib.sha256(key).hexdigest()[:12]}"


def official_python() -> Path:
    """The environment's interpreter, built on first use."""
    root = env_dir()
    python, ready = root / "bin" / "python", root / ".ready"
    if ready.is_file():
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file():
            return python
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--system-site-packages", str(root)], check=True)
        constraints = root / "constraints.txt"
        constraints.write_text("\n".join(_pins()) + "\n")
        result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                 "-c", str(constraints), *REQUIREMENTS], capture_output=True, text=True)
        if result.returncode != 0:
            raise OfficialUnavailable(f"could not build {root}: {result.stderr.strip()[-2000:]}")
        ready.write_text("\n".join(REQUIREMENTS) + "\n")
    return python


if __name__ == "__main__":
    print(official_python())
