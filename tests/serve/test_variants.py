"""Per-request overrides -> Pipeline variants that share stage objects (and so loaded models)."""

from __future__ import annotations

import pytest

from recognize.errors import RecipeError
from recognize.serve.variants import Variants, check_override

from .conftest import TEST_RECIPE, write_recipe


def test_variants_share_stages_with_equal_configuration(tmp_path, test_stages) -> None:
    variants = Variants(write_recipe(tmp_path, TEST_RECIPE))
    base = variants.base
    other = variants.get(["stages.1.with.score=0.5"])
    assert other.stages[0] is base.stages[0] and other.stages[2] is base.stages[2]
    assert other.stages[1] is not base.stages[1] and other.stages[1].params.score == 0.5
    assert variants.get(["stages.1.with.score=0.5"]) is other  # built once
    assert other.stage_keys[0] == base.stage_keys[0] != "" and other.stage_keys[1] != base.stage_keys[1]
    assert other.pipeline.outputs[0] is base.pipeline.outputs[0]


def test_variants_are_bounded(tmp_path, test_stages) -> None:
    variants = Variants(write_recipe(tmp_path, TEST_RECIPE), max_variants=2)
    for score in (0.1, 0.2, 0.3):
        variants.get([f"stages.1.with.score={score}"])
    assert len(variants._variants) == 2
    assert len(variants._stages) == 2 + 2 + 1  # brightness, box_mask, two center_box, annotated_image


@pytest.mark.parametrize("override", ["stages.0.with.checkpoint=/etc/passwd", "stages.0.with.tag_list=x",
                                      "outputs.0.with.font=/x.ttf", "stages.0.with.config={}",
                                      "stages.0.with.device=cuda", "settings.batch_size=64", "stages.0.use=sam",
                                      "stages=[]", "missing-equals"])
def test_overrides_that_pick_files_weights_or_hardware_are_refused(override) -> None:
    with pytest.raises(RecipeError):
        check_override(override)


def test_allowed_overrides_and_validation_messages(tmp_path, test_stages) -> None:
    check_override("stages.1.with.box_threshold=0.3")
    check_override("outputs.0.with.quality=80")
    variants = Variants(write_recipe(tmp_path, TEST_RECIPE))
    with pytest.raises(RecipeError, match=r"stages\[1\]\.with\.score: Input should be less than or equal to 1"):
        variants.get(["stages.1.with.score=3"])


def test_describe_lists_settable_numbers(tmp_path, test_stages) -> None:
    described = Variants(write_recipe(tmp_path, TEST_RECIPE)).describe()
    center = described["stages"][1]
    assert center["use"] == "center_box" and center["with"] == {"score": 0.8}
    assert center["settable"] == [{"name": "score", "type": "number", "minimum": 0.0, "maximum": 1.0,
                                   "description": None}]
    assert not [p for p in described["stages"][0]["settable"] if p["name"] == "device"]


def test_describe_does_not_disclose_server_paths(tmp_path, test_stages) -> None:
    recipe = {**TEST_RECIPE, "outputs": [{"use": "annotated_image", "with": {"font": __file__, "quality": 80}}]}
    described = Variants(write_recipe(tmp_path, recipe)).describe()
    assert described["outputs"][0]["with"] == {"font": "(set by the server)", "quality": 80}
    assert __file__ not in str(described)


@pytest.mark.parametrize("override", ["stages.2.with.tagger_with={checkpoint: /etc/passwd}",
                                      "stages.2.with.tagger=tag2text",
                                      "stages.3.with.localizer={use: center_box, with: {score: 0.1}}"])
def test_nested_stage_specs_cannot_be_overridden(tmp_path, test_stages, override) -> None:
    recipe = {**TEST_RECIPE, "stages": [{"use": "brightness"}, {"use": "center_box"},
                                        {"use": "region_confirm", "with": {"tagger": "ram"}},
                                        {"use": "tiled", "with": {"localizer": {"use": "center_box"}}}]}
    variants = Variants(write_recipe(tmp_path, recipe))
    with pytest.raises(RecipeError, match="fixed by the server's recipe"):
        variants.get([override])
    assert variants.get(["stages.2.with.threshold=0.2"]).stages[2].params.threshold == 0.2


def test_only_numbers_are_settable_whatever_a_parameter_is_called(tmp_path, test_stages) -> None:
    recipe = {**TEST_RECIPE, "stages": [{"use": "brightness"}, {"use": "center_box"},
                                        {"use": "region_confirm", "with": {"tagger": "ram"}}]}
    variants = Variants(write_recipe(tmp_path, recipe))
    # a choice (a string) passes the name check but is not a number that tunes results
    check_override("stages.2.with.drop_tags=unconfirmed")
    with pytest.raises(RecipeError, match="'drop_tags' is fixed by the server's recipe"):
        variants.get(["stages.2.with.drop_tags=unconfirmed"])
    assert variants.get(["stages.2.with.padding=0.2"]).stages[2].params.padding == 0.2
