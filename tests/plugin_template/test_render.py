"""recognize.plugin_template: the names a package gets, and what is written (no install here)."""

from __future__ import annotations

import ast
import tomllib

import pytest

from recognize.errors import InputError
from recognize.plugin_template import KINDS, PluginNames, render, write_plugin


@pytest.mark.parametrize("given, dist, module, stage, cls", [
    ("blur-check", "recognize-blur-check", "recognize_blur_check", "blur_check", "BlurCheck"),
    ("recognize-blur-check", "recognize-blur-check", "recognize_blur_check", "blur_check", "BlurCheck"),
    ("Depth_Anything2", "recognize-depth-anything2", "recognize_depth_anything2", "depth_anything2",
     "DepthAnything2"),
    ("ocr", "recognize-ocr", "recognize_ocr", "ocr", "Ocr"),
])
def test_every_name_follows_from_the_one_given(given, dist, module, stage, cls):
    assert PluginNames.from_name(given) == PluginNames(dist=dist, module=module, stage=stage, cls=cls)


@pytest.mark.parametrize("bad", ["9lives", "blur check", "blur--check", "", "-x", "class", "é"])
def test_unusable_names_are_one_line_input_errors(bad):
    with pytest.raises(InputError) as err:
        PluginNames.from_name(bad)
    assert "\n" not in str(err.value) and err.value.exit_code == 2


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_renders_valid_python_toml_and_the_entry_point(kind):
    files = render("demo-thing", kind)
    assert sorted(files) == ["README.md", "pyproject.toml", "recognize_demo_thing/__init__.py",
                             "recognize_demo_thing/plugin.py", "recognize_demo_thing/stage.py",
                             "tests/test_demo_thing.py"]
    for path, text in files.items():
        assert "$" not in text.replace("$ ", ""), f"unfilled placeholder in {path}"
        if path.endswith(".py"):
            ast.parse(text, filename=path)
    project = tomllib.loads(files["pyproject.toml"])["project"]
    assert project["name"] == "recognize-demo-thing"
    assert project["entry-points"]["recognize"] == {"demo_thing": "recognize_demo_thing.plugin"}
    hook = "register_outputs" if kind == "output" else "register_stages"
    assert f"def {hook}(register)" in files["recognize_demo_thing/plugin.py"]
    assert "from recognize.testing import check_stage" in files["tests/test_demo_thing.py"]
    assert f"the `demo_thing` {kind} stage" in files["README.md"]


def test_an_unknown_kind_and_an_existing_folder_are_refused(tmp_path):
    with pytest.raises(InputError, match="unknown kind 'detector'"):
        render("x", "detector")
    root = write_plugin("x", "tagger", tmp_path)
    assert (root / "recognize_x" / "stage.py").is_file()
    with pytest.raises(InputError, match="already exists"):
        write_plugin("x", "captioner", tmp_path)
