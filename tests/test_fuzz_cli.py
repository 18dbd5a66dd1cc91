"""Fuzz `recognize run`'s input and output side: generated input names, folders and OUT placements.

A seeded generator builds a corpus of awkward cases (names that shadow run files, dot names,
backslashes, `%`, unicode, nested folders named like outputs, an image and its twin with another
extension, unreadable bytes; OUT beside, inside or equal to the inputs, at a file, under a file,
in a non-empty folder) and random recipes (every built-in output, in random combinations) and
runs the CLI on each, sometimes twice. Whatever happens must be one of the documented outcomes:

- exit code 0, 1, 2 or 3 and no traceback (the CLI's own error handling, not an escaped exception);
- no file outside OUT created, changed or removed (inputs are never overwritten);
- no partial file left in OUT (atomic-write temps, `.partial/` after a finished run).

The CLI runs in-process (click's runner: the same code as `recognize run`, minus interpreter
start-up) so the corpus can be large and the test stays under a minute. Broken images, recipes
and COCO files are fuzzed in `tests/test_fuzz_inputs.py`.
"""

from __future__ import annotations

import os
import random
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

SEED = 10
CASES = 36

NAMES = [
    "summary.jpg", "manifest.jpg", "coco.jpg", "tags.png", "report.png", "frames.jpg", "labels.png",
    "..jpg", ".hidden.png", "a\\b.jpg", "a%5Cb.jpg", "%41.png", "sp ace.png", "ünï-字.jpg", "x.jpg", "x.png",
    "x.annotated.jpg", "x.jpg.annotated.jpg", "data.yaml.png", "classes.txt.jpg", "-dash.png", "UPPER.JPG",
    "frames/x.jpg", "labels/x.png", "images/x.jpg", ".partial/x.png", ".recognize/x.jpg", "a.json/b.png",
    "deep/er/still/x.jpg", "manifest.json/x.png",
]
OUTPUTS = [
    "{use: json}", "{use: annotated_image}", "{use: annotated_image, with: {format: png}}", "{use: coco}",
    "{use: tags_jsonl}", "{use: yolo}", "{use: yolo, with: {copy_images: true}}", "{use: data_engine_report}",
    "{use: coco, with: {filename: other.json}}", "{use: tags_jsonl, with: {filename: coco.json}}",
    "{use: coco, with: {filename: ../escape.json}}", "{use: coco, with: {filename: frames}}",
]
PLACEMENTS = ["sibling", "inside", "equal", "file", "under_file", "non_empty", "nested_new", "inside_frames"]


def make_case(rng: random.Random, root: Path) -> tuple[list[str], Path, str]:
    """Write one corpus case under `root`; returns (CLI inputs, OUT, recipe text)."""
    images = root / "in"
    images.mkdir()
    for name in rng.sample(NAMES, rng.randint(1, 8)):
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if rng.random() < 0.12:
            path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 40))))  # not an image
        else:
            shade = rng.randrange(256)
            Image.new("RGB", (rng.randint(1, 24), rng.randint(1, 24)), (shade, shade, shade)).save(path, format="PNG")
    placement = rng.choice(PLACEMENTS)
    out = {
        "sibling": root / "out", "inside": images / "out", "equal": images, "file": root / "a-file",
        "under_file": root / "a-file" / "out", "non_empty": root / "busy", "nested_new": root / "n" / "e" / "w",
        "inside_frames": images / "frames",
    }[placement]
    if placement in ("file", "under_file"):
        (root / "a-file").write_text("not a folder")
    if placement == "non_empty":
        (root / "busy").mkdir()
        (root / "busy" / "notes.txt").write_text("someone else's file")
    files = sorted(p for p in images.rglob("*") if p.is_file())
    kind = rng.random()
    if kind < 0.5 or not files:
        inputs = [str(images)]
    elif kind < 0.7:
        inputs = [str(images / "**" / "*"), str(images / "*.jpg")]
    else:
        inputs = [str(p) for p in rng.sample(files, rng.randint(1, len(files)))] * rng.randint(1, 2)
    outputs = rng.sample(OUTPUTS, rng.randint(0, 3))
    recipe = "recipe: 1\nstages:\n  - use: brightness\n  - use: center_box\n  - use: box_mask\n"
    recipe += "outputs:\n" + "".join(f"  - {o}\n" for o in outputs) if outputs else ""
    return inputs, out, recipe


def snapshot(root: Path, out: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `root` that is not inside OUT, with its size and bytes."""
    taken = {}
    out = out.resolve()
    for path in sorted(root.rglob("*")):
        resolved = path.resolve()
        if resolved == out or out in resolved.parents or not path.is_file():
            continue
        taken[path.relative_to(root).as_posix()] = path.read_bytes()
    return taken


@pytest.fixture
def cli(test_stages, cache_home):
    from recognize.cli import build_cli

    return build_cli()


@pytest.mark.slow
def test_generated_inputs_and_output_folders(cli, tmp_path):
    rng = random.Random(SEED)
    runner = CliRunner()
    outcomes: dict[int, int] = {}
    for index in range(CASES):
        root = tmp_path / f"case{index:02d}"
        root.mkdir()
        inputs, out, recipe_text = make_case(rng, root)
        recipe = root / "recipe.yaml"
        recipe.write_text(recipe_text)
        before = snapshot(root, out)
        runs = 2 if rng.random() < 0.3 else 1
        for _ in range(runs):
            args = ["run", str(recipe), *inputs, "-o", str(out), "-q", *(["--overwrite"] if rng.random() < 0.2 else [])]
            result = runner.invoke(cli, args, catch_exceptions=True)
            where = f"case {index}: recognize {' '.join(args)}\n{result.output}"
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                tb = "".join(traceback.format_exception(result.exception))
                pytest.fail(f"{where}\nescaped exception:\n{tb}")
            assert result.exit_code in (0, 1, 2, 3), where
            assert "Traceback" not in result.output, where
            outcomes[result.exit_code] = outcomes.get(result.exit_code, 0) + 1
            after = snapshot(root, out)
            assert after.keys() == before.keys(), f"{where}\nfiles outside OUT changed: {set(after) ^ set(before)}"
            assert all(after[k] == before[k] for k in before), f"{where}\nan input was overwritten"
            if out.is_dir():
                leftovers = [p for p in out.rglob("*.part")]
                assert not leftovers, f"{where}\npartial files left: {leftovers}"
                if result.exit_code == 0:
                    assert not (out / ".partial").exists(), where
    # the corpus exercises both sides: runs that finish and runs that are refused
    assert outcomes.get(0, 0) > 0 and outcomes.get(2, 0) > 0, outcomes


def test_names_that_shadow_run_files_never_touch_them(cli, tmp_path):
    """The deterministic core of the corpus: every tricky name at once, OUT beside the inputs."""
    images = tmp_path / "in"
    for name in NAMES:
        path = images / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (9, 9, 9)).save(path, format="PNG")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("recipe: 1\nstages:\n  - use: brightness\noutputs:\n  - use: coco\n  - use: tags_jsonl\n"
                      "  - use: annotated_image\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(recipe), str(images), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    frames = sorted(p for p in (out / "frames").rglob("*.json") if p.is_file())
    assert len(frames) == len(NAMES)
    assert sorted(os.listdir(out)) == [".recognize", "coco.json", "frames", "manifest.json", "summary.json",
                                       "tags.jsonl"]
