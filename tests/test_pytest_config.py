"""The suite's own selections, as the README documents them: `-k parity` and `-m parity` pick the
same tests, and the markers it uses are the ones registered in pyproject.toml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Loaded into the collecting pytest with `-p`: it writes every collected test's node id with whether it
# carries the `parity` marker (before `-k` deselects anything), then the node ids `-k` left. One
# collection of the whole suite (~40 s on 2 cores) gives both selections.
MARKER_REPORT = '''
import json
import os

import pytest

REPORT = {}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    REPORT["marked"] = {item.nodeid: item.get_closest_marker("parity") is not None for item in items}


def pytest_collection_finish(session):
    REPORT["selected"] = [item.nodeid for item in session.items]
    with open(os.environ["RECOGNIZE_MARKER_REPORT"], "w", encoding="utf-8") as report:
        json.dump(REPORT, report)
'''


def test_markers_are_registered():
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]
    registered = {line.split(":")[0] for line in config["markers"]}
    assert {"slow", "parity", "subprocess"} <= registered
    assert config["timeout"] >= 300  # generous: a hang fails, a slow machine does not


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_keyword_and_the_marker_select_the_same_tests(tmp_path):
    (tmp_path / "marker_report.py").write_text(MARKER_REPORT, encoding="utf-8")
    report = tmp_path / "marked.json"
    env = {**os.environ, "RECOGNIZE_MARKER_REPORT": str(report),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                             "-p", "marker_report", "-k", "parity"],
                            cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode in (0, 5), result.stdout[-2000:] + result.stderr[-2000:]
    collected = json.loads(report.read_text(encoding="utf-8"))
    by_keyword = set(collected["selected"])
    by_marker = {node for node, has_marker in collected["marked"].items() if has_marker}
    assert len(collected["marked"]) > len(by_marker), "the report saw only parity tests: it ran after the selection"
    assert by_marker, "no parity test collected"
    assert by_keyword == by_marker
