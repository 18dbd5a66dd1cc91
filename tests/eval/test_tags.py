"""`evaluate_tags` with a deterministic scoring tagger on small generated images."""

import csv

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

from recognize.errors import InputError, RecognizeError
from recognize.eval.tags import evaluate_tags, find_tagger, open_set_overrides, tagger_vocabulary
from recognize.images import load_image
from recognize.pipeline import Pipeline

COLOURS = {
    "test/red": (220, 30, 30), "test/green": (30, 200, 40), "test/blue": (20, 40, 230),
    "test/white": (250, 250, 250), "test/black": (5, 5, 5), "test/grey": (128, 120, 128),
}


@pytest.fixture
def bench_files(tmp_path):
    """OpenImages-style files: names without extension, comma-separated tag names."""
    images = tmp_path / "imgs"
    (images / "test").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        pixels = np.empty((24, 32, 3), np.uint8)
        pixels[:] = colour
        if name == "test/grey":
            pixels = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)  # busy
        Image.fromarray(pixels).save(images / f"{name}.jpg", quality=95)
    (images / "test" / "broken.jpg").write_bytes(b"not a jpeg")
    taglist = tmp_path / "bench_ram_taglist.txt"
    taglist.write_text("red\ngreen\nblue\nbright\ndark\nbusy\n")
    annots = tmp_path / "bench_ram_annots.txt"
    annots.write_text(
        "test/red,red\ntest/green,green,bright\ntest/blue,blue,dark\ntest/white,bright\n"
        "test/absent,red\ntest/black,dark\ntest/broken,busy\ntest/grey,busy,red,green\n"
    )
    return images, annots, taglist


def build(tmp_path, stages_yaml):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"recipe: 1\nstages:\n{stages_yaml}")
    return recipe


def test_scores_metrics_and_reports(eval_stages, bench_files, tmp_path):
    images, annots, taglist = bench_files
    stage = Pipeline.from_recipe(build(tmp_path, "  - use: pixel_tagger\n")).stages[0]
    result = evaluate_tags(stage, images, annots, taglist)

    assert result.missing == ["test/absent"]
    assert [name for name, _ in result.unreadable] == ["test/broken"]
    assert "not an image" in result.unreadable[0][1] or "unreadable" in result.unreadable[0][1]
    assert result.evaluated == ["test/red", "test/green", "test/blue", "test/white", "test/black", "test/grey"]
    assert stage.batches == [4, 2]  # the stage's batch size (4): the 7 files found, less the broken one

    # scores are the tagger's own, in the taglist's column order
    pixels = [load_image(images / f"{name}.jpg") for name in result.evaluated]
    expected = eval_stages.PixelTagger().score_images(pixels)
    np.testing.assert_array_equal(result.scores, expected)

    truth = result.targets
    ap = [average_precision_score(truth[:, k], expected[:, k]) for k in range(6)]
    np.testing.assert_allclose(result.metrics.ap.ap, ap, atol=1e-7)
    predicted = expected >= np.array(eval_stages.THRESHOLDS, dtype=np.float32)
    tp = (predicted & truth).sum(0)
    np.testing.assert_allclose(result.metrics.pr.precision, tp / np.maximum(predicted.sum(0), 1), atol=1e-8)
    np.testing.assert_allclose(result.metrics.pr.recall, tp / truth.sum(0), atol=1e-8)

    summary = result.summary()
    assert summary["images_listed"] == 8 and summary["images_evaluated"] == 6
    assert summary["images_missing"] == 1 and summary["images_unreadable"] == 1
    assert summary["metrics"]["mAP"] == pytest.approx(np.mean(ap))

    out = tmp_path / "out" / "ap.csv"
    result.write_per_class_csv(out)
    rows = list(csv.DictReader(out.open()))
    assert [r["tag"] for r in rows] == ["red", "green", "blue", "bright", "dark", "busy"]
    assert float(rows[0]["AP"]) == pytest.approx(ap[0] * 100, abs=1e-4)
    assert int(rows[5]["positives"]) == 1 and rows[3]["threshold"] == "0.55"


def test_missing_images_can_be_an_error(eval_stages, bench_files, tmp_path):
    images, annots, taglist = bench_files
    stage = Pipeline.from_recipe(build(tmp_path, "  - use: pixel_tagger\n")).stages[0]
    with pytest.raises(InputError, match=r"1 of 8 annotated images are not in .*'test/absent'"):
        evaluate_tags(stage, images, annots, taglist, require_all=True)
    with pytest.raises(InputError, match="none of the 8 images listed"):
        evaluate_tags(stage, tmp_path, annots, taglist)
    with pytest.raises(InputError, match="no such images folder"):
        evaluate_tags(stage, tmp_path / "nowhere", annots, taglist)


def test_explicit_batch_size_and_global_threshold(eval_stages, bench_files, tmp_path):
    images, annots, taglist = bench_files
    pipeline = Pipeline.from_recipe(build(tmp_path, "  - use: pixel_tagger\n    with: {threshold: 0.2}\n"))
    result = evaluate_tags(pipeline.stages[0], images, annots, taglist, batch_size=2)
    assert pipeline.stages[0].batches == [2, 2, 1, 1]  # 7 found, the broken one never reaches the tagger
    assert result.metrics.thresholds.tolist() == pytest.approx([0.2] * 6)


def test_find_tagger(eval_stages, test_stages, tmp_path):
    pipeline = Pipeline.from_recipe(build(tmp_path, "  - use: brightness\n  - use: pixel_tagger\n"))
    with pytest.raises(RecognizeError, match="'brightness' has no score_images"):
        find_tagger(pipeline.stages)  # the first tagger cannot give all scores
    assert find_tagger(pipeline.stages, "pixel_tagger") is pipeline.stages[1]
    with pytest.raises(InputError, match=r"no stage named 'ram'.*brightness \(tagger\)"):
        find_tagger(pipeline.stages, "ram")
    with pytest.raises(InputError, match="no tagger stage"):
        find_tagger(Pipeline.from_recipe(build(tmp_path, "  - use: center_box\n")).stages)


def test_vocabulary_contract(eval_stages, test_stages):
    names, thresholds = tagger_vocabulary(eval_stages.PixelTagger())
    assert names == eval_stages.NAMES and thresholds.dtype == np.float64
    with pytest.raises(RecognizeError, match="does not expose its vocabulary"):
        tagger_vocabulary(test_stages.Brightness())


def test_open_set_overrides(eval_stages, test_stages, bench_files, tmp_path):
    images, annots, taglist = bench_files
    recipe = build(tmp_path, "  - use: brightness\n  - use: pixel_tagger\n")
    overrides = open_set_overrides(recipe, taglist, stage="pixel_tagger")
    assert overrides == [f"stages.1.with.tags='{taglist}'"]  # no descriptions file beside the taglist
    descriptions = tmp_path / "bench_llm_tag_descriptions.json"  # the official layout
    descriptions.write_text("[]")
    overrides = open_set_overrides(recipe, taglist, stage="pixel_tagger")
    assert overrides[1] == f"stages.1.with.descriptions='{descriptions}'"
    stage = find_tagger(Pipeline.from_recipe(recipe, overrides).stages, "pixel_tagger")
    assert stage.params.tags == str(taglist)
    result = evaluate_tags(stage, images, annots, taglist)
    assert result.columns.tolist() == list(range(6))  # vocabulary == taglist: position by position
    assert result.metrics.thresholds.tolist() == [0.5] * 6
    with pytest.raises(InputError, match="'brightness' has no open-set mode"):
        open_set_overrides(recipe, taglist)


@pytest.mark.slow
def test_real_ram_tagger_on_its_fixture(reference, tmp_path):
    """The `ram` stage (tiny random weights in the official layout) on real photos, OpenImages taglist."""
    fixture = reference / "fixtures" / "ram"
    if not (fixture / "checkpoint.pth").is_file():
        pytest.skip(f"no RAM fixture at {fixture}")
    root = reference / "data" / "datasets" / "openimages_common_214"
    images = tmp_path / "imgs" / "test"
    images.mkdir(parents=True)
    for photo in (reference / "data" / "images" / "demo").glob("*.jpg"):
        (images / photo.name).symlink_to(photo)
    annots = tmp_path / "annots.txt"
    annots.write_text("test/demo2,car,flower\ntest/demo3,dog,pet\ntest/demo4,cat,car\n")
    recipe = build(tmp_path, f"  - use: ram\n    with: {{config: '{fixture / 'config.json'}', "
                             f"checkpoint: '{fixture / 'checkpoint.pth'}', device: cpu}}\n")
    stage = find_tagger(Pipeline.from_recipe(recipe).stages)
    result = evaluate_tags(stage, tmp_path / "imgs", annots, root / "openimages_common_214_ram_taglist.txt")

    ram_names = (reference / "data" / "ram" / "data" / "ram_tag_list.txt").read_text().splitlines()
    official_thresholds = np.loadtxt(reference / "data" / "ram" / "data" / "ram_tag_list_threshold.txt")
    assert [ram_names[c] for c in result.columns] == result.taglist.names
    # thresholds: the official per-class file, subset by class index as batch_inference.py does
    np.testing.assert_allclose(result.metrics.thresholds, official_thresholds[result.columns], atol=1e-6)
    pixels = [load_image(images / f"{name}.jpg") for name in ("demo2", "demo3", "demo4")]
    np.testing.assert_allclose(result.scores, stage.score_images(pixels)[:, result.columns], atol=1e-6)
    truth = result.targets
    has = truth.any(axis=0)
    ap = [average_precision_score(truth[:, k], result.scores[:, k]) for k in np.flatnonzero(has)]
    assert result.metrics.ap.map_with_positives == pytest.approx(np.mean(ap))
    assert result.metrics.ap.map == pytest.approx(np.sum(ap) / 214)
