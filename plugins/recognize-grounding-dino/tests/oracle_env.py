"""The official Grounding DINO code as a test oracle, in an environment of its own.

rf-groundingdino (the official code) builds only on transformers 4.x, while this plugin and its
users run on the current transformers. So the oracle never shares the test process: the first
parity test creates a virtual environment (`--system-site-packages`, so torch and the other big
libraries are reused, not downloaded again; run from a venv, that venv's packages too:
`_see_this_environment`) holding rf-groundingdino and `transformers<5`, cached under
`$RECOGNIZE_ORACLE_HOME` (default `~/.cache/recognize/oracles/<hash of the requirements>`).
A machine without the package index (a lent GPU machine) builds it from a folder of wheels instead:
`$RECOGNIZE_ORACLE_WHEELS` (`_install_command`).
`official_worker.py` runs there in a subprocess, reads a JSON job and writes its numbers to an
.npz file that the test compares in the main process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import site
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
WORKER = HERE / "official_worker.py"
#: what the oracle environment adds on top of the test process's packages
REQUIREMENTS = ("rf-groundingdino==0.3.0", "transformers>=4.40,<5")
#: never let the oracle's resolver replace these (the oracle must run the test process's torch)
KEEP = ("torch", "torchvision", "numpy")
#: a folder of wheels to build the environment from, without the package index
WHEELS = "RECOGNIZE_ORACLE_WHEELS"
#: what the built environment must import, and the transformers it must have (run once it is built)
CHECK = "import groundingdino.models, transformers; assert int(transformers.__version__.split('.')[0]) < 5"


class OracleUnavailable(RuntimeError):
    """The oracle environment could not be built (e.g. no package index reachable)."""


def _constraints() -> list[str]:
    pins = []
    for name in KEEP:
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{name}=={metadata.version(name)}")
    return pins


def _installed() -> list[str]:
    """name==version of every package the test process sees: the oracle was resolved against them."""
    return sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]})


def _wheels() -> list[Path]:
    """The wheels of `$RECOGNIZE_ORACLE_WHEELS` (none when it is unset)."""
    folder = os.environ.get(WHEELS)
    if not folder:
        return []
    wheels = sorted(Path(folder).glob("*.whl"))
    if not wheels:
        raise OracleUnavailable(f"{WHEELS}={folder} holds no wheels (*.whl)")
    return wheels


def _install_command(python: Path, constraints: Path) -> list[str]:
    """pip's command for the environment: `REQUIREMENTS` from the package index, or every wheel of
    `$RECOGNIZE_ORACLE_WHEELS` with `--no-index --no-deps`. Why no resolving there: the folder holds what
    the environment adds (rf-groundingdino, transformers<5 and the tokenizers and huggingface_hub it
    takes), and the rest comes from the main environment, sometimes under another name than
    rf-groundingdino asks for (`opencv-python-headless` for `opencv-python`), which a resolver would
    try to install from a folder that lacks it. `_check` then proves the result imports."""
    base = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-c", str(constraints)]
    wheels = _wheels()
    if wheels:
        return [*base, "--no-index", "--no-deps", *map(str, wheels)]
    return [*base, *REQUIREMENTS]


def _see_this_environment(python: Path) -> None:
    """Make the oracle see this process's packages where `--system-site-packages` does not: that flag shows
    the base interpreter's, so where this process runs in a venv itself (a user's `.venv`, a GPU image's),
    torch and the rest would be missing there. A .pth file adds this venv's site-packages after the
    oracle's own, so the oracle's transformers 4.x still comes first (and pip there sees torch as installed).
    Through `site.addsitedir`, not as plain paths: that also reads the .pth files in them, which is how
    editable installs (`pip install -e`, as the README sets up) put the project on the path."""
    if sys.prefix == sys.base_prefix:
        return
    root = str(python.parent.parent)  # the venv: same interpreter, so the same layout as this one's scheme says
    scheme = "venv" if "venv" in sysconfig.get_scheme_names() else "posix_prefix"  # "venv": Python 3.11+
    purelib = sysconfig.get_path("purelib", scheme, vars={"base": root, "platbase": root})
    paths = [path for path in site.getsitepackages() if Path(path).is_dir()]
    lines = [f"import site; site.addsitedir({path!r})" for path in paths]
    (Path(purelib) / "_recognize_parent_env.pth").write_text("\n".join(lines) + "\n")


def oracle_dir() -> Path:
    """One environment per (interpreter, requirements, installed packages): upgrading transformers in
    the main environment, say, gives a freshly resolved oracle instead of a stale one."""
    wheels = [w.name for w in _wheels()]  # another folder of wheels, another environment
    key = json.dumps([sys.version, sys.prefix, REQUIREMENTS, _installed(), *([wheels] if wheels else [])]).encode()
    home = os.environ.get("RECOGNIZE_ORACLE_HOME") or Path.home() / ".cache" / "recognize" / "oracles"
    return Path(home) / f"groundingdino-{hashlib.sha256(key).hexdigest()[:12]}"


def oracle_python() -> Path:
    """The oracle environment's interpreter, built on first use (a lock keeps parallel runs apart)."""
    root = oracle_dir()
    python = root / "bin" / "python"
    ready = root / ".ready"
    if ready.is_file():
        return python
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file():
            return python
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--system-site-packages", str(root)], check=True)
        _see_this_environment(python)
        constraints = root / "constraints.txt"
        constraints.write_text("\n".join(_constraints()) + "\n")
        result = subprocess.run(_install_command(python, constraints), capture_output=True, text=True)
        if result.returncode == 0:
            result = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True)
        if result.returncode != 0:
            raise OracleUnavailable(f"could not build the oracle environment in {root}:\n{result.stderr[-3000:]}")
        ready.write_text("\n".join([w.name for w in _wheels()] or REQUIREMENTS) + "\n")  # what it was built from
    return python


def run_official(job: dict[str, Any], workdir: Path) -> dict[str, np.ndarray]:
    """Run `job` through the official code in the oracle environment; its arrays by name."""
    python = oracle_python()
    workdir.mkdir(parents=True, exist_ok=True)
    job_file = workdir / f"{job['task']}.job.json"
    out_file = workdir / f"{job['task']}.npz"
    job_file.write_text(json.dumps({**job, "output": str(out_file)}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([str(python), str(WORKER), str(job_file)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"the official code failed on {job['task']!r}:\n{result.stderr[-4000:]}")
    with np.load(out_file) as data:
        return {name: data[name] for name in data.files}
