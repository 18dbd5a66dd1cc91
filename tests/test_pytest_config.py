"""The suite's own selections, as the README documents them: `-k parity` and `-m parity` pick the
same tests, and the markers it uses are the ones registered in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _collect(*args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode in (0, 5), result.stdout[-2000:] + result.stderr[-2000:]
    return {line for line in result.stdout.splitlines() if "::" in line}


def test_markers_are_registered():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
    registered = {line.split(":")[0] for line in config["markers"]}
    assert {"slow", "parity", "subprocess"} <= registered
    assert config["timeout"] >= 300  # generous: a hang fails, a slow machine does not


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_keyword_and_the_marker_select_the_same_tests():
    by_keyword = _collect("-k", "parity")
    by_marker = _collect("-m", "parity")
    assert by_marker, "no parity test collected"
    assert by_keyword == by_marker
