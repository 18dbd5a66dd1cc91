"""The distribution as a third-party plugin: entry point, registered stage and model cards, recipes."""

from __future__ import annotations

from importlib import metadata

import pytest

from recognize import Frame, plugins
from recognize.stage import shared_models
from recognize_grounding_dino.stage import GroundingDino


def test_the_entry_point_registers_the_stage_and_model_cards():
    points = {ep.name: ep.value for ep in metadata.entry_points(group="recognize")}
    assert points.get("grounding_dino") == "recognize_grounding_dino.plugin"
    plugins.reset()
    assert plugins.get_stage("grounding_dino") is GroundingDino
    assert GroundingDino.kind == "localizer"
    cards = plugins.model_cards()
    swint = cards["groundingdino_swint_ogc"].files[0]
    assert swint.url == "https://huggingface.co/ShilongLiu/GroundingDINO/resolve/main/groundingdino_swint_ogc.pth"
    assert cards["groundingdino_swinb_cogcoor"].files[0].filename == "groundingdino_swinb_cogcoor.pth"
    info = next(i for i in plugins.plugin_infos() if i.name == "recognize-grounding-dino")
    assert info.stages == ["grounding_dino"] and not info.builtin
    assert sorted(info.models) == ["groundingdino_swinb_cogcoor", "groundingdino_swint_ogc"]


def test_the_stage_declares_checkpoint_and_vocab():
    files = [(r.card, r.filename) for r in GroundingDino().model_files()]
    assert files == [("groundingdino_swint_ogc", "groundingdino_swint_ogc.pth"), ("bert-base-uncased-vocab", "vocab.txt")]
    assert GroundingDino(checkpoint="/w/gd.pth", vocab="/w/vocab.txt").model_files() == []  # local files
    cards = plugins.model_cards()
    for ref in GroundingDino(model="swinb").model_files():
        cards[ref.card].file(ref.filename)


def test_a_recipe_builds_and_runs_the_stage(tmp_path, tiny_checkpoint, vocab, tiny, photos):
    yaml = pytest.importorskip("yaml")
    from recognize import Pipeline

    recipe = tmp_path / "ground.yaml"
    recipe.write_text(yaml.safe_dump({
        "recipe": 1,
        "name": "ground",
        "stages": [{"use": "grounding_dino", "with": {
            "checkpoint": str(tiny_checkpoint), "vocab": str(vocab), "config": tiny, "classes": ["dog", "person"],
            "box_threshold": 0.2, "text_threshold": 0.0, "image_size": 64, "max_size": 112, "device": "cpu"}}],
    }))
    try:
        pipeline = Pipeline.from_recipe(recipe, overrides=["stages.0.with.nms=cross_tag"])
        (stage,) = pipeline.stages
        assert isinstance(stage, GroundingDino) and stage.params.nms == "cross_tag"
        frame = pipeline.process([Frame(source=str(photos[-1]))])[0]
    finally:
        shared_models.clear()
    assert frame.regions and {r.tag for r in frame.regions} <= {"dog", "person"}
