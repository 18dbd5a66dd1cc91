"""`recipes/data_engine.yaml`: it validates, its stages share one tagger configuration, and it runs
end to end (models swapped for the fake colour tagger and a centre-box localizer) into a cleaned
dataset: COCO instances, per-image tags JSONL and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from recognize import plugins
from recognize.data_engine.reasons import (
    REASON_ALL_REJECTED,
    REASON_NOT_CONFIRMED,
    REASON_OUTLIER,
)
from recognize.pipeline import Pipeline
from recognize.recipe import apply_override, load_recipe
from recognize.runner import run_to_folder

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
RECIPE = RECIPES / "data_engine.yaml"

#: the recipe with its models swapped for test stages (the colour tagger accepts `image_size`)
FAKE_MODELS = [
    "stages.0.use=colour_tagger",
    "stages.2.use=center_box",
    "stages.2.with={}",
    "stages.3.with.tagger=colour_tagger",
    "stages.4.with.tagger=colour_tagger",
]


@pytest.fixture
def fakes():
    import colour_tagger

    with colour_tagger.registered():
        yield colour_tagger


def test_data_engine_recipe_validates():
    if "grounding_dino" not in plugins.stages():
        pytest.skip("the grounding_dino plugin is not installed here (see test_data_engine_recipe_runs)")
    recipe = load_recipe(RECIPE)
    assert [s.use for s in recipe.stages] == ["ram_plus", "merge_tags", "grounding_dino", "region_confirm",
                                             "region_outliers"]
    assert [s.use for s in recipe.outputs] == ["coco", "tags_jsonl", "data_engine_report"]
    pipeline = Pipeline.from_recipe(recipe)
    assert pipeline.has_dataset_stage


def test_data_engine_recipe_shares_one_tagger_configuration():
    # the YAML anchor makes the region stages' `tagger_with` the very dict of the tagging stage's
    # `with`, so a --set on the tagger reaches all three and the model instance stays shared
    data = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    tagger_with = data["stages"][0]["with"]
    for i in (3, 4):
        assert data["stages"][i]["with"]["tagger_with"] is tagger_with
        assert data["stages"][i]["with"]["tagger"] == data["stages"][0]["use"]
    apply_override(data, "stages.0.with.threshold=0.7")
    assert data["stages"][3]["with"]["tagger_with"]["threshold"] == 0.7


def test_tag_ground_segment_switches_region_confirm_on_with_one_line():
    text = (RECIPES / "tag_ground_segment.yaml").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if "use: region_confirm" in line]
    assert len(lines) == 1
    switched = text.replace(lines[0], lines[0].replace("# - use", "- use", 1).split("#")[0].rstrip())
    data = yaml.safe_load(switched)
    assert [s["use"] for s in data["stages"]] == ["ram_plus", "grounding_dino", "region_confirm", "sam"]


def colour_folder(root: Path) -> tuple[Path, Path]:
    """12 images, red left and blue right (shades vary); img05's centre is green; img07's centre is
    magenta (red and blue both confirm there, but its crops are far from every other crop);
    img01 has a sidecar, img02 a caption."""
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        image = np.zeros((40, 80, 3), np.uint8)
        image[:, :40] = (rng.integers(190, 230), 25, 25)
        image[:, 40:] = (25, 25, rng.integers(190, 230))
        if i == 5:
            image[10:30, 20:60] = (20, 210, 20)
        if i == 7:
            image[10:30, 20:60] = (200, 20, 160)
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
    (folder / "img01.txt").write_text("green, lamp\n", encoding="utf-8")
    captions = root / "captions.jsonl"
    captions.write_text(json.dumps({"image": "images/img02.png", "caption": "a blue wall and a red door"}) + "\n",
                        encoding="utf-8")
    return folder, captions


def test_data_engine_recipe_runs(fakes, tmp_path):
    folder, captions = colour_folder(tmp_path)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red\ngreen\nblue\ndoor\nwall\n", encoding="utf-8")
    overrides = [*FAKE_MODELS, f"stages.1.with.captions={captions}", f"stages.1.with.vocabulary={vocab}",
                 "stages.4.with.padding=0.0"]
    pipeline = Pipeline.from_recipe(load_recipe(RECIPE, overrides))
    out = tmp_path / "out"
    summary = run_to_folder(pipeline, [folder], out, quiet=True)
    assert summary.processed == 12 and not summary.failures
    assert len(fakes.BUILDS) == 1  # tagging, confirm and outliers: one model

    lines = [json.loads(line) for line in (out / "tags.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == [f"img{i:02d}.png" for i in range(12)]
    by_image = {line["image"][:5]: line for line in lines}
    dropped = {name: sorted((d["item"], d["tag"], d["stage"], d["reason"]) for d in line["dropped"])
               for name, line in by_image.items()}
    # img01: the sidecar's `green` box is rejected on its crop, and the tag with it; `lamp` is not in
    # the tagger's vocabulary, so it cannot be refuted and stays (unknown_tags: keep)
    assert by_image["img01"]["tags"] == ["red", "blue", "lamp"]
    assert dropped["img01"] == [("region", "green", "region_confirm", REASON_NOT_CONFIRMED),
                                ("tag", "green", "region_confirm", REASON_ALL_REJECTED)]
    # img02: caption parsed into vocabulary tags, and kept as the frame's caption
    assert by_image["img02"]["tags"] == ["red", "blue", "wall", "door"]
    assert by_image["img02"]["caption"] == "a blue wall and a red door"
    # img07: the planted outliers, exactly: 11 red and 11 blue crops, floor(10%) = 1 dropped per tag
    assert dropped["img07"] == [("region", "blue", "region_outliers", REASON_OUTLIER),
                                ("region", "red", "region_outliers", REASON_OUTLIER)]
    assert by_image["img07"]["regions"] == 0 and by_image["img07"]["tags"] == ["red", "blue"]
    assert by_image["img05"]["tags"] == []  # nothing above threshold on the green-centred image
    for name in ("img00", "img03", "img04", "img06", "img08", "img09", "img10", "img11"):
        assert by_image[name]["regions"] == 2 and dropped[name] == []

    coco = json.loads((out / "coco.json").read_text())
    assert len(coco["annotations"]) == sum(line["regions"] for line in lines) == 23
    assert {c["name"] for c in coco["categories"]} == {"red", "blue", "lamp", "wall", "door"}
    report = json.loads((out / "report.json").read_text())
    red = next(e for e in report["tags"] if e["tag"] == "red")
    assert (red["images"], red["regions_kept"], red["regions_dropped"]) == (11, 10, 1)
    assert red["reasons"][0]["stage"] == "region_outliers" and red["reasons"][0]["min_value"] > 0
    assert report["totals"] == {"tags_kept": 25, "regions_kept": 23, "tags_dropped": 1, "regions_dropped": 3}
    markdown = (out / "report.md").read_text()
    assert "| red | 11 | 10 | 1 | 0 |" in markdown and "| green | region_confirm | tag |" in markdown

    # a resumed run reads the frames back from their JSON: same dataset files, nothing recomputed
    before = {name: (out / name).read_text() for name in ("coco.json", "tags.jsonl", "report.json", "report.md")}
    again = run_to_folder(Pipeline.from_recipe(load_recipe(RECIPE, overrides)), [folder], out, quiet=True)
    assert again.skipped == 12 and again.processed == 0
    assert {name: (out / name).read_text() for name in before} == before
