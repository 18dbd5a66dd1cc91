"""The CLI through a subprocess, as a user runs it."""

import json
import subprocess
import sys

import pytest
from clihelp import cli_env

pytestmark = pytest.mark.subprocess

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
                          env=cli_env(), cwd=cwd, timeout=600, check=False)


@pytest.mark.slow
def test_run_end_to_end(image_folder, tmp_path):
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(RECIPE)
    (image_folder / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "out"
    result = recognize("run", recipe, image_folder, "-o", out, "--set", "stages.1.with.score=0.4")
    assert result.returncode == 1, result.stderr  # one bad image: reported, others done
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    (skipped,) = [line for line in result.stderr.splitlines() if line.startswith("skipped ")]
    assert skipped.count("broken.png") == 1, skipped  # the path once, then why
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


@pytest.mark.slow
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
    text = " ".join(result.stdout.split())
    assert "list files" in text and "manifests (.jsonl / .parquet" in text and "shards" in text


def test_stages_lists_and_describes():
    listing = recognize("stages")
    assert "center_box" in listing.stdout and "localizer" in listing.stdout
    one = recognize("stages", "center_box")
    assert "score" in one.stdout


# -- issue 10: nothing lost, nothing escapes --------------------------------------------------
TAG_COCO = """\
recipe: 1
stages:
  - use: brightness
  - use: center_box
outputs:
  - use: coco
"""


def image(path, value=128, size=(16, 12)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path, format="PNG")
    return path


def one_line_error(result, code=2):
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    return result.stderr


def test_every_image_has_its_own_result_and_never_overwrites_run_files(tmp_path):
    """Principle 1: summary.jpg / manifest.jpg / coco.jpg, `a\\b.jpg` beside `a/b.jpg`, `..jpg`, and
    x.jpg beside x.png each get their own result; the run's files stay the run's."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TAG_COCO)
    folder = tmp_path / "in"
    names = ["summary.jpg", "manifest.jpg", "coco.jpg", "a\\b.jpg", "a/b.jpg", "..jpg", "x.jpg", "x.png"]
    for i, name in enumerate(names):
        image(folder / name, value=20 * i)
    out = tmp_path / "out"
    result = recognize("run", recipe, folder, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    assert "8 processed" in result.stderr
    sources = {json.loads(p.read_text())["source"] for p in (out / "frames").rglob("*.json")}
    assert sources == {str(folder / name) for name in names}
    assert json.loads((out / "summary.json").read_text())["counts"]["processed"] == 8
    assert "pipeline" in json.loads((out / "manifest.json").read_text())
    assert len(json.loads((out / "coco.json").read_text())["images"]) == 8
    again = recognize("run", recipe, folder, "-o", out, "-q")  # re-runs converge
    assert again.returncode == 0 and "0 processed, 8 already done" in again.stderr


def test_resume_is_by_source_identity_not_by_name(tmp_path):
    """Principle 2: another folder's x.png is not done; a changed source is redone; a moved copy
    with the same content is recognised."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    image(tmp_path / "shift" / "x.png", value=10)
    image(tmp_path / "shift2" / "x.png", value=200)
    image(tmp_path / "shift2" / "x.jpg", value=100)
    first = recognize("run", recipe, tmp_path / "shift", "-o", out, "-q")
    assert first.returncode == 0 and "1 processed" in first.stderr
    second = recognize("run", recipe, tmp_path / "shift2", "-o", out, "-q")
    assert second.returncode == 0 and "2 processed, 0 already done" in second.stderr, second.stderr
    assert json.loads((out / "frames" / "x.png.json").read_text())["tags"][0]["name"] == "bright"
    image(tmp_path / "shift2" / "x.jpg", value=250, size=(20, 12))  # the photo changed
    third = recognize("run", recipe, tmp_path / "shift2", "-o", out, "-q")
    assert third.returncode == 0 and "1 processed, 1 already done" in third.stderr, third.stderr
    import shutil

    shutil.copytree(tmp_path / "shift2", tmp_path / "moved")  # same content, other path and mtime
    moved = recognize("run", recipe, tmp_path / "moved", "-o", out, "-q")
    assert moved.returncode == 0 and "0 processed, 2 already done" in moved.stderr, moved.stderr


def test_missing_manifest_refuses_and_failed_start_does_not_block(tmp_path, cache_home):
    """Principle 2: a non-empty OUT without a readable manifest is not resumed into; a run that fails
    before any image (missing weights) leaves nothing that blocks the corrected command."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert recognize("run", recipe, tmp_path / "in", "-o", out, "-q").returncode == 0
    (out / "manifest.json").write_text("{ not json")
    refused = one_line_error(recognize("run", recipe, tmp_path / "in", "-o", out, "-q"))
    assert "manifest.json" in refused and "--overwrite" in refused
    (out / "manifest.json").unlink()
    one_line_error(recognize("run", recipe, tmp_path / "in", "-o", out, "-q"))
    redo = recognize("run", recipe, tmp_path / "in", "-o", out, "-q", "--overwrite")
    assert redo.returncode == 0 and "1 processed" in redo.stderr

    weights = tmp_path / "weights.yaml"
    weights.write_text("recipe: 1\nstages:\n  - use: ram_plus\n    with: {checkpoint: /nonexistent/ram.pth}\n")
    fresh = tmp_path / "fresh"
    failed = recognize("run", weights, tmp_path / "in", "-o", fresh, "-q")
    assert failed.returncode == 3 and "Traceback" not in failed.stderr, failed.stderr
    assert not fresh.exists()  # a run that could not start leaves no folder behind
    fixed = recognize("run", recipe, tmp_path / "in", "-o", fresh, "-q")
    assert fixed.returncode == 0 and "1 processed" in fixed.stderr, fixed.stderr


def test_recipe_file_names_stay_inside_out(tmp_path):
    """Principle 3: `filename:` is a plain name, not a run file, not another output's."""
    image(tmp_path / "in" / "a.png")
    cases = {
        "{use: coco, with: {filename: ../escape.json}}": "outputs[0].with.filename",
        "{use: coco, with: {filename: /tmp/abs.json}}": "outputs[0].with.filename",
        "{use: tags_jsonl, with: {filename: ''}}": "outputs[0].with.filename",
        "{use: coco, with: {filename: summary.json}}": "outputs[0].with.filename",
    }
    for output, where in cases.items():
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"recipe: 1\nstages:\n  - use: brightness\noutputs:\n  - {output}\n")
        assert where in one_line_error(recognize("run", recipe, tmp_path / "in", "-o", tmp_path / "out", "-q"))
    recipe.write_text("recipe: 1\nstages:\n  - use: brightness\noutputs:\n  - use: coco\n"
                      "  - {use: tags_jsonl, with: {filename: coco.json}}\n")
    clash = one_line_error(recognize("run", recipe, tmp_path / "in", "-o", tmp_path / "out", "-q"))
    assert "outputs[1]" in clash and "outputs[0]" in clash
    assert not (tmp_path / "escape.json").exists() and not (tmp_path / "out").exists()


def test_out_inside_the_inputs_is_never_read_back_nor_overwrites_them(tmp_path):
    """Principle 3: OUT inside an input folder is skipped; OUT equal to it is refused."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    photos = tmp_path / "photos"
    image(photos / "x.jpg", value=30)
    source = image(photos / "x.annotated.jpg", value=220).read_bytes()
    out = photos / "out"
    for _ in range(2):
        result = recognize("run", recipe, photos, "-o", out, "-q")
        assert result.returncode == 0, result.stderr
    assert "0 processed, 2 already done" in result.stderr  # its own outputs did not become inputs
    assert (photos / "x.annotated.jpg").read_bytes() == source
    assert "output folder" in one_line_error(recognize("run", recipe, photos, "-o", photos, "-q"))


def test_batch_size_and_device_work_without_a_settings_section(tmp_path):
    """Principle 6."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    image(tmp_path / "in" / "a.png")
    result = recognize("run", recipe, tmp_path / "in", "-o", tmp_path / "out", "-q", "--batch-size", "3",
                       "--device", "cpu")
    assert result.returncode == 0, result.stderr


def test_bad_inputs_and_output_folders_are_one_line(tmp_path):
    """Principles 7-9: FIFOs, empty folders and globs, -o at or under a file, a full disk."""
    import os

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    image(tmp_path / "in" / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    assert "FIFO" in one_line_error(recognize("run", recipe, tmp_path / "pipe.png", "-o", tmp_path / "o1", "-q"))
    (tmp_path / "empty").mkdir()
    assert "no image" in one_line_error(recognize("run", recipe, tmp_path / "empty", "-q"))
    one_line_error(recognize("run", recipe, str(tmp_path / "in" / "*.webp"), "-q"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "afile" in one_line_error(recognize("run", recipe, tmp_path / "in", "-o", afile, "-q"))
    assert "afile" in one_line_error(recognize("run", recipe, tmp_path / "in", "-o", afile / "sub", "-q"))

    # a full disk: every write fails (EFBIG under RLIMIT_FSIZE=0) once the program has started
    start_then_fill = ("import resource, sys\nfrom recognize import plugins\nfrom recognize.cli import main\n"
                       "plugins.stages()\nresource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\nmain(sys.argv[1:])")
    full = subprocess.run([sys.executable, "-c", start_then_fill, "run", str(recipe), str(tmp_path / "in"), "-o",
                           str(tmp_path / "full"), "-q"], capture_output=True, text=True, env=cli_env(), timeout=120,
                          check=False)
    assert full.returncode in (1, 2) and "Traceback" not in full.stderr, full.stderr
    assert full.stderr.strip().count("\n") == 0 and "full" in full.stderr


def test_a_killed_runs_temp_files_are_cleaned(tmp_path):
    """Principle 9: a temp file of a process that is gone is removed by the next run."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert recognize("run", recipe, tmp_path / "in", "-o", out, "-q").returncode == 0
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=False)
    stale = out / "frames" / f".a.png.json.{gone.stdout.strip()}.k2x9_q.part"
    stale.write_text('{"half": ')
    assert recognize("run", recipe, tmp_path / "in", "-o", out, "-q").returncode == 0
    assert not stale.exists()


def test_a_read_only_output_folder_is_one_line(tmp_path):
    """Principle 8: OUT that cannot be written is refused at start, in one line (exit 2)."""
    import os

    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    image(tmp_path / "in" / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes through permissions: use a read-only file system if we may mount one
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(locked)],
                              capture_output=True, check=False)
        if made.returncode != 0:
            pytest.skip("running as root without permission to mount a read-only file system")
        mounted = True
    else:
        locked.chmod(0o555)
    try:
        error = one_line_error(recognize("run", recipe, tmp_path / "in", "-o", locked / "out", "-q"))
        assert "locked" in error and "-o" in error
    finally:
        if mounted:
            subprocess.run(["umount", str(locked)], check=False)
        else:
            locked.chmod(0o755)


def test_engine_ray_without_ray_is_one_line(image_folder, tmp_path):
    # a `ray` package that cannot be imported, first on the path: what a machine without the extra sees
    (tmp_path / "noray" / "ray").mkdir(parents=True)
    (tmp_path / "noray" / "ray" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    recipe = tmp_path / "demo.yaml"
    recipe.write_text(RECIPE)
    env = cli_env()
    env["PYTHONPATH"] = f"{tmp_path / 'noray'}:{env['PYTHONPATH']}"
    result = subprocess.run([sys.executable, "-m", "recognize", "run", str(recipe), str(image_folder), "-o",
                             str(tmp_path / "out"), "--engine", "ray"], capture_output=True, text=True, env=env,
                            timeout=600, check=False)
    assert "pip install 'recognize[ray]'" in one_line_error(result)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without a CUDA GPU")
@pytest.mark.parametrize("where", ["option", "recipe", "stage"])
def test_a_gpu_that_is_not_there_is_one_line_before_any_download(tmp_path, cache_home, where):
    """`--device cuda` (or `device: cuda` in the recipe, or on the stage itself) without a CUDA GPU: exit 2,
    one line that names the stage and what to change, no traceback, no output folder, and no attempt at
    the weights (an empty cache, offline: a weights check first would have failed with exit 3)."""
    recipe = tmp_path / "tag.yaml"
    settings = "settings: {device: cuda}\n" if where == "recipe" else ""
    own = "\n    with: {device: cuda}" if where == "stage" else ""
    recipe.write_text(f"recipe: 1\nname: tag\n{settings}stages:\n  - use: ram_plus{own}\noutputs:\n  - use: json\n")
    image(tmp_path / "in" / "a.png")
    extra = ["--device", "cuda"] if where == "option" else []
    result = recognize("run", recipe, tmp_path / "in", "-o", tmp_path / "out", *extra)
    assert result.returncode == 2, result.stderr
    message = one_line_error(result)
    assert message.startswith("error: ram_plus: device cuda")
    if where == "stage":  # --device would not override it: the hint says where to change it
        assert "set this stage's own device (its `with:` in the recipe) to cpu or auto" in message
    else:
        assert "use device cpu or auto (--device on the command line)" in message
    assert not (tmp_path / "out").exists()
