"""The `owlv2` stage on real photos with a tiny random OWLv2: tags in, regions with exact tags out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from owl_support import TINY, TINY_CONFIG
from pydantic import ValidationError

from recognize import Frame, Pipeline, Tag
from recognize.errors import ModelFileError, RecipeError
from recognize_owlv2 import Owlv2


def tagged(path) -> Frame:
    return Frame(source=str(path), tags=[Tag(name="dog", name_zh="狗"), Tag(name="traffic light", name_zh="红绿灯"),
                                         Tag(name="grass")])


@pytest.fixture(scope="module")
def located(photos):
    frames = [tagged(photos["demo4"]), Frame(source=str(photos["demo4"]))]
    return Pipeline([Owlv2(**{**TINY, "box_threshold": 0.3})], batch_size=2)(frames)


def test_regions_name_exact_tags_with_chinese_names(located):
    frame, untagged = located
    zh = {t.name: t.name_zh for t in frame.tags}
    assert frame.regions and untagged.regions == []
    assert {r.tag for r in frame.regions} <= set(zh)
    for region in frame.regions:
        assert region.tag_zh == zh[region.tag] and region.source == "owlv2" and region.score > 0.3
        x0, y0, x1, y1 = region.box
        assert 0 <= x0 < x1 <= frame.width and 0 <= y0 < y1 <= frame.height
    scores = [r.score for r in frame.regions]
    assert scores == sorted(scores, reverse=True)


def test_per_tag_nms_leaves_no_overlapping_pair_of_one_tag(located):
    from supervision.detection.utils.iou_and_nms import box_iou_batch

    frame = located[0]
    for tag in {r.tag for r in frame.regions}:
        boxes = np.array([r.box for r in frame.regions if r.tag == tag])
        iou = box_iou_batch(boxes, boxes)
        np.fill_diagonal(iou, 0)
        assert iou.max(initial=0) <= 0.3 + 1e-6


def test_fixed_classes_add_the_tags_they_find(photos):
    (frame,) = Pipeline([Owlv2(**{**TINY, "box_threshold": 0.3, "classes": ["cat", "car"]})])(
        [Frame(source=str(photos["demo4"]))]
    )
    assert frame.regions and {r.tag for r in frame.regions} <= {"cat", "car"}
    assert {t.name for t in frame.tags} == {r.tag for r in frame.regions}


def test_missing_official_weights_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    with pytest.raises(ModelFileError) as info:
        Owlv2(device="cpu").ensure_loaded()
    message = str(info.value)
    assert "\n" not in message and "model.safetensors" in message and str(tmp_path / "home") in message
    assert "https://huggingface.co/google/owlv2-base-patch16-ensemble/resolve/main/model.safetensors" in message


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model": "huge"}, "'base_patch16_ensemble'"),
        ({"box_treshold": 0.2}, "Extra inputs are not permitted"),
        ({"config": TINY_CONFIG}, "give `checkpoint` or set `weights: random`"),
        ({"query_template": "a photo"}, "must contain {}"),
        ({"nms": "soft"}, "'per_tag', 'cross_tag' or 'none'"),
    ],
)
def test_params_are_validated(params, message):
    with pytest.raises(ValidationError, match=message):
        Owlv2(**params)


def test_recipe_error_names_the_parameter(tmp_path):
    recipe = tmp_path / "owl.yaml"
    recipe.write_text("recipe: 1\nstages:\n  - use: owlv2\n    with: {box_treshold: 0.2}\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.with\.box_treshold: unknown parameter; did you mean 'box_threshold'"):
        Pipeline.from_recipe(recipe)
    recipe.write_text(f"recipe: 1\nstages:\n  - use: owlv2\n    with: {json.dumps(TINY)}\n")
    (stage,) = Pipeline.from_recipe(recipe).stages
    assert isinstance(stage, Owlv2) and stage.params.config == TINY_CONFIG


def test_model_files_name_the_released_weights_only_when_they_are_used(tmp_path):
    from recognize.hub import FileRef

    assert Owlv2().model_files() == [FileRef("owlv2_base_patch16_ensemble", "model.safetensors")]
    assert Owlv2(model="large_patch14_ensemble").model_files() == [FileRef("owlv2_large_patch14_ensemble",
                                                                           "model.safetensors")]
    assert Owlv2(**TINY).model_files() == [] and Owlv2(checkpoint=str(tmp_path / "w.safetensors")).model_files() == []


def test_model_files_first_refuse_a_transformers_below_the_floor(monkeypatch):
    import importlib.metadata

    from recognize.errors import RecognizeError

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.1.0" if name == "transformers" else real(name))
    with pytest.raises(RecognizeError, match=r"owlv2 needs transformers >= 5\.2 \(installed: 5\.1\.0\)"):
        Owlv2().model_files()


def test_tiled_owlv2_checks_the_inner_files_before_loading(tmp_path, monkeypatch):
    pytest.importorskip("recognize_tiles")
    from recognize_tiles import Tiled

    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    stage = Tiled(localizer={"use": "owlv2", "with": {"model": "base_patch16"}})
    assert [ref.card for ref in stage.model_files()] == ["owlv2_base_patch16"]
    with pytest.raises(ModelFileError, match="owlv2-base-patch16/resolve/main/model.safetensors"):
        stage.ensure_loaded()
