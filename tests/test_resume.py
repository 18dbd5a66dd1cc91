"""`kill -9` at any moment, then the same command again: every image exactly once in the outputs."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from clihelp import cli_env
from PIL import Image

N = 12


def recipe(tmp_path, dataset_stage: bool):
    stages = "  - use: brightness\n    with: {delay: 0.25}\n  - use: center_box\n"
    if dataset_stage:
        stages += "  - use: count_dataset\n  - use: box_mask\n"
    path = tmp_path / "slow.yaml"
    path.write_text(f"recipe: 1\nsettings: {{batch_size: 2}}\nstages:\n{stages}outputs:\n  - use: coco\n")
    return path


def start(args, **env):
    return subprocess.Popen([sys.executable, "-m", "recognize", "run", *map(str, args), "-q"], env=cli_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(out) -> set[str]:
    """Names with a complete line in OUT/.recognize/done.jsonl (a torn last line does not count)."""
    try:
        lines = (out / ".recognize" / "done.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return set()
    names = set()
    for line in lines:
        try:
            names.add(json.loads(line)["name"])
        except ValueError:
            pass
    return names


def make_images(folder):
    folder.mkdir()
    for i in range(N):
        Image.fromarray(np.full((24, 24, 3), i * 20, np.uint8)).save(folder / f"img{i:02d}.png")


@pytest.mark.parametrize("dataset_stage", [False, True], ids=["streaming", "dataset-scope"])
def test_kill_then_rerun_gives_every_image_once(tmp_path, dataset_stage):
    images = tmp_path / "images"
    make_images(images)
    out = tmp_path / "out"
    args = [recipe(tmp_path, dataset_stage), images, "-o", out]

    def progress() -> int:
        if dataset_stage:
            return len(list((out / ".partial").rglob("img*.json")))
        return len(finished(out))  # an image counts as done once its record is in the journal

    proc = start(args)
    deadline = time.time() + 90
    while time.time() < deadline and progress() < N // 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = progress()
    assert 0 < done_before < N, "the run was not interrupted mid-way"
    assert not (out / "summary.json").exists()

    again = start(args)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    summary = json.loads((out / "summary.json").read_text())
    if not dataset_stage:
        assert summary["counts"]["skipped"] == done_before  # finished images were not redone
    assert summary["counts"]["processed"] + summary["counts"]["skipped"] == N
    frames = sorted((out / "frames").glob("img*.json"))
    assert [f.stem for f in frames] == [f"img{i:02d}.png" for i in range(N)]
    for path in frames:
        frame = json.loads(path.read_text())
        assert len(frame["tags"]) == 1 and len(frame["regions"]) == 1  # nothing applied twice
        if dataset_stage:
            assert frame["meta"]["dataset_size"] == N
            assert frame["regions"][0]["mask"] is not None
    coco = json.loads((out / "coco.json").read_text())
    assert sorted(img["file_name"] for img in coco["images"]) == sorted(f"img{i:02d}.png" for i in range(N))
    assert len(coco["annotations"]) == N
    assert not (out / ".partial").exists() and not list(out.rglob("*.part"))


def test_killed_while_writing_after_a_dataset_stage(tmp_path):
    """Killed after the dataset-scope stage, while final files are written: the re-run must not
    re-run that stage on the unfinished subset (its results depend on every frame)."""
    images = tmp_path / "images"
    make_images(images)
    path = tmp_path / "r.yaml"
    path.write_text("recipe: 1\nsettings: {batch_size: 2}\nstages:\n  - use: brightness\n"
                    "  - use: count_dataset\n  - use: die_on\n")
    out = tmp_path / "out"
    first = start([path, images, "-o", out], TEST_DIE_ON="img07")
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL
    assert 0 < len(list((out / "frames").glob("img*.json"))) < N
    again = start([path, images, "-o", out])
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    sizes = [json.loads(p.read_text())["meta"]["dataset_size"] for p in sorted((out / "frames").glob("img*.json"))]
    assert sizes == [N] * N
