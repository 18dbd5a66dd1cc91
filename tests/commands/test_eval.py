"""`recognize eval`: through a subprocess as a user runs it, and in-process for the error paths."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from clihelp import cli_env
from sklearn.metrics import average_precision_score

from recognize.images import load_image

TAGGER_RECIPE = "recipe: 1\nname: pixels\nstages:\n  - use: pixel_tagger\n"
REGIONS_RECIPE = "recipe: 1\nstages: [{use: brightness}, {use: center_box}, {use: box_mask}]\n"

#: made-up ground truth for real photos, in the official OpenImages RAM format (no file extension)
ANNOTATIONS = (
    "photos/demo2,bright,blue\n"
    "photos/demo3,red,bright\n"
    "photos/absent,red\n"
    "photos/demo4,dark,busy,red\n"
    "photos/1641173_2291260800,bright\n"
)


def recognize(*args, cwd=None):
    env = cli_env(RECOGNIZE_PLUGINS="teststages,evalstages")
    return subprocess.run([sys.executable, "-m", "recognize", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture
def photo_benchmark(reference, tmp_path):
    """The reference photos (linked, not copied) as a benchmark folder with a taglist and annotations."""
    import evalstages

    images = tmp_path / "imgs"
    (images / "photos").mkdir(parents=True)
    for photo in [*(reference / "data" / "images" / "demo").glob("*.jpg"),
                  reference / "data" / "images" / "1641173_2291260800.jpg"]:
        (images / "photos" / photo.name).symlink_to(photo)
    taglist = tmp_path / "photos_ram_taglist.txt"
    taglist.write_text("\n".join(evalstages.NAMES) + "\n")
    annots = tmp_path / "photos_ram_annots.txt"
    annots.write_text(ANNOTATIONS)
    recipe = tmp_path / "pixels.yaml"
    recipe.write_text(TAGGER_RECIPE)
    return images, annots, taglist, recipe


def expected_numbers(images, names):
    """mAP and CP/CR/CF1 computed here, independently: scikit-learn AP (0 without positives)."""
    import evalstages

    truth_rows = {line.split(",")[0]: line.split(",")[1:] for line in ANNOTATIONS.splitlines()}
    found = [n for n in truth_rows if (images / f"{n}.jpg").exists()]
    scores = evalstages.PixelTagger().score_images([load_image(images / f"{n}.jpg") for n in found])
    truth = np.array([[tag in truth_rows[n] for tag in names] for n in found])
    ap = [average_precision_score(truth[:, k], scores[:, k]) if truth[:, k].any() else 0.0
          for k in range(len(names))]
    predicted = scores >= np.array(evalstages.THRESHOLDS, dtype=np.float32)
    tp = (predicted & truth).sum(0)
    precision = np.where(predicted.sum(0) > 0, tp / np.maximum(predicted.sum(0), 1), 0.0)
    recall = np.where(truth.sum(0) > 0, tp / np.maximum(truth.sum(0), 1), 0.0)
    cp, cr = precision.mean(), recall.mean()
    return {"mAP": np.mean(ap) * 100, "CP": cp * 100, "CR": cr * 100, "CF1": 200 * cp * cr / (cp + cr),
            "ap": ap}


def test_eval_tags_on_real_photos(photo_benchmark, tmp_path):
    import evalstages

    images, annots, taglist, recipe = photo_benchmark
    out = tmp_path / "out"
    result = recognize("eval", "tags", "--recipe", recipe, "--images", images, "--annotations", annots,
                       "--taglist", taglist, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    want = expected_numbers(images, evalstages.NAMES)
    lines = result.stdout.splitlines()
    assert lines[0] == "images: 4 of 5 scored; classes: 6"
    assert lines[1].startswith(f"mAP: {want['mAP']:.2f}  (1 class has no positive image")  # green
    assert lines[2] == f"CP: {want['CP']:.2f}  CR: {want['CR']:.2f}  CF1: {want['CF1']:.2f}"
    assert "warning: 1 of 5 annotated images are not in" in result.stderr and "'photos/absent'" in result.stderr
    assert "Traceback" not in result.stderr
    assert (out / "tags_missing_images.txt").read_text() == "photos/absent\n"
    rows = list(csv.DictReader((out / "tags_per_class.csv").open()))
    assert [r["tag"] for r in rows] == evalstages.NAMES
    np.testing.assert_allclose([float(r["AP"]) for r in rows], np.array(want["ap"]) * 100, atol=1e-4)
    summary = json.loads((out / "tags_summary.json").read_text())
    assert summary["images_missing"] == 1 and summary["metrics"]["mAP"] == pytest.approx(want["mAP"] / 100)


def test_eval_regions_through_a_recipe(image_folder, tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({  # teststages box the central half: white (60x40) is bright, black (30x50) dark
        "images": [{"id": 1, "file_name": "white.png", "width": 60, "height": 40},
                   {"id": 2, "file_name": "black.jpg", "width": 30, "height": 50}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [15, 10, 30, 20], "area": 600},
                        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [7.5, 12.5, 15, 25], "area": 375}],
        "categories": [{"id": 1, "name": "bright"}, {"id": 2, "name": "dark"}],
    }))
    recipe = tmp_path / "boxes.yaml"
    recipe.write_text(REGIONS_RECIPE)
    result = recognize("eval", "regions", "--recipe", recipe, "--images", image_folder, "--annotations", gt,
                       "--iou-type", "bbox", "-o", tmp_path / "out", "-q")
    assert result.returncode == 0, result.stderr
    assert "images: 2 of 2 evaluated; regions: 2" in result.stdout
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in result.stdout
    summary = json.loads((tmp_path / "out" / "regions_summary.json").read_text())
    assert summary["metrics"]["bbox"]["AP"] == pytest.approx(1.0)


# -- in-process: formats, open-set, predictions folder and the error paths ----------------------------
@pytest.fixture
def run_cli(test_stages):
    import evalstages

    from recognize.cli import build_cli

    with evalstages.registered():
        group = build_cli()
        yield lambda *args: CliRunner().invoke(group, [str(a) for a in args])


def test_open_set_on_position_annotations(run_cli, tmp_path):
    """HICO / ImageNet-multi style: `image,3 17` positions into a taglist the tagger does not know."""
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    for i, value in enumerate((10, 120, 240)):
        Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(images / f"HICO_{i}.jpg")
    taglist = tmp_path / "hico_600_taglist.txt"
    taglist.write_text("person ride horse\nperson hold cup\nperson no_interaction dog\n")
    annots = tmp_path / "hico_600_annots.txt"
    annots.write_text("HICO_0.jpg,0 2\nHICO_1.jpg,\nHICO_2.jpg,1\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TAGGER_RECIPE)
    args = ["eval", "tags", "--recipe", recipe, "--images", images, "--annotations", annots, "--taglist", taglist,
            "-o", tmp_path / "out", "-q"]
    closed = run_cli(*args)
    assert closed.exit_code == 2
    assert "3 of 3 classes" in closed.output and "--open-set" in closed.output
    opened = run_cli(*args, "--open-set")
    assert opened.exit_code == 0, opened.output
    assert "images: 3 of 3 scored; classes: 3" in opened.output
    summary = json.loads((tmp_path / "out" / "tags_summary.json").read_text())
    assert summary["open_set"] is True and summary["classes_without_positives"] == 0


def test_regions_from_a_predictions_folder(run_cli, tmp_path):
    from recognize.frame import Frame, Region

    out = tmp_path / "run"
    out.mkdir()
    (out / "a.json").write_text(Frame(source="/data/a.jpg", width=20, height=20, regions=[
        Region(tag="cat", box=(0, 0, 10, 10), score=0.8), Region(tag="sofa", box=(0, 0, 5, 5))]).to_json())
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 20, "height": 20},
                   {"id": 8, "file_name": "b.jpg", "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 10, 10]}],
        "categories": [{"id": 3, "name": "cat"}],
    }))
    result = run_cli("eval", "regions", "--predictions", out, "--annotations", gt, "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "1 of 2 annotated images have no prediction" in result.output
    assert "1 regions have a tag that is no ground truth category" in result.output and "'sofa' x1" in result.output
    assert json.loads((tmp_path / "eval" / "regions_summary.json").read_text())["metrics"]["bbox"]["AP"] == pytest.approx(1.0)


def test_regions_from_a_run_folders_shards(run_cli, tmp_path):
    """`recognize eval` reads the `shards` output (OUT/shards/part-*.jsonl); a torn last line is skipped."""
    from recognize.frame import Frame, Region

    shards = tmp_path / "run" / "shards"
    shards.mkdir(parents=True)
    frames = [Frame(source=f"/data/{n}.jpg", name=f"{n}.jpg", width=20, height=20,
                    regions=[Region(tag="cat", box=(0, 0, 10, 10), score=0.8)]) for n in ("a", "b")]
    (shards / "part-00000.jsonl").write_text(frames[0].to_json(indent=None) + "\n")
    (shards / "part-00001.jsonl").write_text(frames[1].to_json(indent=None) + "\n" + '{"source": "/da')
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.jpg", "width": 20, "height": 20},
                   {"id": 8, "file_name": "b.jpg", "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 10, 10]},
                        {"id": 2, "image_id": 8, "category_id": 3, "bbox": [0, 0, 10, 10]}],
        "categories": [{"id": 3, "name": "cat"}],
    }))
    result = run_cli("eval", "regions", "--predictions", tmp_path / "run", "--annotations", gt, "-o", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "have no prediction" not in result.output
    assert json.loads((tmp_path / "eval" / "regions_summary.json").read_text())["metrics"]["bbox"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(("annots", "extra", "message"), [
    ("x,red\ny,teapot\n", [], "annots.txt:2: tag 'teapot' is not in the taglist"),
    ("x,red\nnope,red\n", ["--require-all-images"], "1 of 2 annotated images are not in"),
    ("x,red\n", ["--stage", "ram"], "the recipe has no stage named 'ram'"),
])
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path, annots, extra, message):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imgs" / "x.jpg")
    (tmp_path / "annots.txt").write_text(annots)
    (tmp_path / "tags.txt").write_text("red\nblue\n")
    (tmp_path / "r.yaml").write_text(TAGGER_RECIPE)
    result = run_cli("eval", "tags", "--recipe", tmp_path / "r.yaml", "--images", tmp_path / "imgs",
                     "--annotations", tmp_path / "annots.txt", "--taglist", tmp_path / "tags.txt", *extra)
    assert result.exit_code == 2
    assert message in result.output and result.output.startswith("error: ")
    assert len(result.output.strip().splitlines()) == 1


def test_regions_needs_one_source(run_cli, tmp_path):
    result = run_cli("eval", "regions", "--annotations", tmp_path / "gt.json")
    assert result.exit_code == 2 and "give either --recipe (with --images) or --predictions" in result.output
