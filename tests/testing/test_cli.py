"""`recognize.testing.run_recipe`: a recipe through the real `recognize run`, in a subprocess."""

from __future__ import annotations

import pytest
from clihelp import cli_env

from recognize.testing import run_recipe


@pytest.mark.subprocess
def test_run_recipe_runs_the_cli_offline_and_reads_frames_back(image_folder, tmp_path):
    recipe = {"recipe": 1, "stages": [{"use": "brightness"}], "outputs": [{"use": "tags_jsonl"}]}
    run = run_recipe(recipe, [image_folder / "white.png", image_folder / "black.jpg"], tmp_path / "out",
                     env={k: v for k, v in cli_env().items() if k in ("PYTHONPATH", "RECOGNIZE_PLUGINS")})
    assert run.returncode == 0, run.stderr
    assert [t.name for t in run.frame("white.png").tags] == ["bright"]
    assert [t.name for t in run.frame("black.jpg").tags] == ["dark"]
    assert (run.out_dir / "tags.jsonl").is_file() and not (tmp_path / "out.home").exists()  # nothing downloaded

    bad = run_recipe({"recipe": 1, "stages": [{"use": "ram_pluss"}]}, [image_folder], tmp_path / "bad")
    assert bad.returncode == 2 and "did you mean 'ram_plus'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
