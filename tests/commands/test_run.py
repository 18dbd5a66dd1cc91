"""The CLI through a subprocess, as a user runs it."""

import json
import subprocess
import sys

from clihelp import cli_env

RECIPE = """\
recipe: 1
name: demo
stages:
  - use: brightness
  - use: center_box
outputs:
  - use: annotated_image
"""


def recognize(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "recognize", *map(str, args)], capture_output=True, text=True,
                          env=cli_env(), cwd=cwd, timeout=120)


def test_run_end_to_end(image_folder, tmp_path):
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(RECIPE)
    (image_folder / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    result = recognize("run", recipe, image_folder, "-o", out, "--set", "stages.1.with.score=0.4")
    assert result.returncode == 1, result.stderr  # one bad image: reported, others done
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    assert "3 processed, 0 already done, 1 failed" in result.stderr
    assert json.loads((out / "frames" / "white.png.json").read_text())["regions"][0]["score"] == 0.4
    assert (out / "frames" / "sub" / "noise.png.annotated.jpg").is_file()
    assert json.loads((out / "summary.json").read_text())["counts"]["failed"] == 1
    (image_folder / "broken.png").unlink()
    again = recognize("run", recipe, image_folder, "-o", out, "--set", "stages.1.with.score=0.4")
    assert again.returncode == 0 and "0 processed, 3 already done" in again.stderr
    other = recognize("run", recipe, image_folder, "-o", out)  # other settings: refused, not mixed
    assert other.returncode == 2 and "different recipe" in other.stderr and "--overwrite" in other.stderr
    assert "Traceback" not in other.stderr


def test_progress_bar_and_quiet(image_folder, tmp_path):
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(RECIPE)
    loud = recognize("run", recipe, image_folder, "-o", tmp_path / "a")
    assert "img" in loud.stderr and "3/3" in loud.stderr
    quiet = recognize("run", recipe, image_folder, "-o", tmp_path / "b", "--quiet")
    assert "3/3" not in quiet.stderr


def test_recipe_errors_exit_2_with_one_line(image_folder, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("recipe: 1\nstages:\n  - use: center_box\n    with: {scor: 1}\n")
    result = recognize("run", recipe, image_folder, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "stages[0].with.scor" in result.stderr
    assert "Traceback" not in result.stderr
    missing = recognize("run", tmp_path / "nope.yaml", image_folder)
    assert missing.returncode == 2 and "no such recipe file" in missing.stderr
    no_input = recognize("run", tmp_path / "bad.yaml", tmp_path / "nothing-here")
    assert no_input.returncode == 2


def test_help_explains(tmp_path):
    result = recognize("run", "--help")
    assert result.returncode == 0 and "--set" in result.stdout and "resumes" in result.stdout


def test_stages_lists_and_describes():
    listing = recognize("stages")
    assert "center_box" in listing.stdout and "localizer" in listing.stdout
    one = recognize("stages", "center_box")
    assert "score" in one.stdout
