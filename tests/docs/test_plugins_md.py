"""docs/plugins.md works as written: its examples run, its tutorial package installs and runs.

The doc's fenced blocks are taken in order, as a reader follows them, in one scratch folder:
- ```LANG file=PATH   the file a reader saves (the tutorial's package, plugin modules, a recipe);
- ```python test      run in one shared namespace, in this process;
- ```bash install     the install step, run as `pip install --no-deps --no-build-isolation --target`
                      (a private folder: nothing touches the environment running the tests);
- ```bash test        run by bash in a subprocess, `recognize` and `python` being this interpreter.
Blocks without a mark (publishing to PyPI, a pip install from the index) are shown, not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.S | re.M)

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def blocks(text: str) -> list[tuple[str, dict[str, str], str]]:
    """(language, {mark: value}, body) for every fenced block, in document order."""
    found = []
    for info, body in FENCE.findall(text):
        words = info.split()
        marks = dict(word.partition("=")[::2] for word in words[1:])
        found.append((words[0] if words else "", marks, body))
    return found


def test_the_doc_marks_what_it_runs():
    marked = blocks(DOC.read_text(encoding="utf-8"))
    assert sum("test" in marks for _, marks, _ in marked) >= 12
    assert any("install" in marks for _, marks, _ in marked)
    python_blocks = [body for lang, marks, body in marked if lang == "python" and not marks]
    assert len(python_blocks) == 1, "every python example but the fixture snippet runs"


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """The reader's folder: shims that make `recognize` and `python` this interpreter, an empty
    recognize cache, and only the tutorial's distribution among installed plugins."""
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    for name, args in (("recognize", "-m recognize"), ("python", "")):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {args} "$@"\n')
        shim.chmod(0o755)
    work = tmp_path / "reader"
    work.mkdir()
    site = tmp_path / "site"
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "0")
    monkeypatch.setenv("RECOGNIZE_LOAD_PLUGINS", "recognize-blur-check")
    monkeypatch.delenv("RECOGNIZE_PLUGINS", raising=False)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return work, site


def _bash(body: str, cwd: Path, site: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(cwd), *sys.path])}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"$ {body}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def test_every_example_and_the_tutorial_run(scratch):
    from recognize import plugins

    work, site = scratch
    namespace: dict = {"__name__": "plugins_md"}
    outputs = []
    for lang, marks, body in blocks(DOC.read_text(encoding="utf-8")):
        if "file" in marks:
            path = work / marks["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body, encoding="utf-8")
        elif "install" in marks:
            for line in body.splitlines():
                folder = re.fullmatch(r"pip install -e (\S+)", line.strip())
                assert folder, f"an install block holds only `pip install -e FOLDER` lines: {line!r}"
                subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                                "--no-build-isolation", "--disable-pip-version-check", "--target", str(site),
                                str(work / folder.group(1))], check=True, timeout=600)
            sys.path.insert(0, str(site))
            plugins.reset()
        elif "test" in marks and lang == "python":
            exec(compile(body, f"{DOC.name} block {len(outputs)}", "exec"), namespace)
            outputs.append(body)
        elif "test" in marks and lang == "bash":
            outputs.append(_bash(body, work, site))
    sys.path.remove(str(site))
    plugins.reset()
    text = "\n".join(outputs)
    # what the doc says these commands show
    assert "recognize-blur-check 0.1.0 (installed)" in text and "stages: blur_check" in text
    assert "blurry" in text and "threshold" in text
    assert "did you mean 'threshold'" in text and "exit code 2" in text
    assert "4 passed" in text  # the tutorial package's own tests
    assert "1\tsharp" in text and "1\tblurry" in text  # the count-tags command over the run's JSON
    assert (work / "out" / "frames" / "sharp.png.json").is_file() and (work / "py-out" / "summary.json").is_file()
