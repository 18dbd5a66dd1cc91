"""recognize.versions: a library release checked when a stage loads, one line below the floor."""

from __future__ import annotations

import pytest

from recognize.errors import RecognizeError
from recognize.versions import require


@pytest.mark.parametrize(("installed", "refused"), [
    ("5.22.2", True), ("5.23.0.dev0", True), ("5.23.0rc1", True), ("4.57.6", True),
    ("5.23", False), ("5.23.0", False), ("5.25.1", False), ("6.0", False), ("not-a-version", False),
])
def test_below_the_floor_is_one_line_that_says_why_and_how_to_fix_it(installed, refused):
    if not refused:
        require("transformers", "5.23", "grounding_dino", "scores differ", installed)
        return
    with pytest.raises(RecognizeError) as error:
        require("transformers", "5.23", "grounding_dino", "scores differ", installed)
    message = str(error.value)
    assert "\n" not in message
    assert message == (f"grounding_dino needs transformers >= 5.23 (installed: {installed}): scores differ; "
                       "pip install -U 'transformers>=5.23'")


def test_the_installed_release_is_read_from_its_metadata():
    require("pytest", "1.0", "tests", "too old")  # installed, and newer
    with pytest.raises(RecognizeError, match="pytest >= 999"):
        require("pytest", "999", "tests", "too old")
    with pytest.raises(RecognizeError, match="no-such-distribution-here >= 1.0, which is not installed"):
        require("no-such-distribution-here", "1.0", "tests", "needed")


def test_a_module_that_imports_without_package_metadata_is_let_through(tmp_path, monkeypatch):
    (tmp_path / "sourcetreepkg").mkdir()
    (tmp_path / "sourcetreepkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))  # as a source tree on PYTHONPATH: importable, no dist-info
    require("sourcetreepkg", "1.0", "tests", "needed")
