"""End to end on real photos with a tiny, randomly initialised SAM 2 built from SAM 2's own classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pydantic import ValidationError
from sam2_support import TINY, TINY_CONFIG, random_boxes

from recognize import Frame, Pipeline, Region, Tag
from recognize.errors import ModelFileError, RecipeError
from recognize.stage import shared_models
from recognize_sam2 import Sam2


def frame_with_regions(path, count: int, seed: int) -> Frame:
    """A frame as a localizer leaves it: tags (one with a Chinese name) and boxes for them."""
    frame = Frame(source=str(path), tags=[Tag(name="dog", name_zh="狗"), Tag(name="grass")])
    height, width = frame.image.shape[:2]
    frame.release_image()  # the stage must load it again by itself
    tags = ["dog", "grass"]
    boxes = random_boxes(height, width, count, seed)
    frame.regions = [Region(box=tuple(box), score=0.5, tag=tags[i % 2], source="test") for i, box in enumerate(boxes)]
    frame.regions[-1].tag_zh = "已有"  # a name the localizer set stays
    frame.regions[-1].tag = "dog"
    return frame


@pytest.fixture(scope="module")
def segmented(small_photo, photos):
    empty = Frame(source=str(photos["demo2"]))
    frames = [frame_with_regions(small_photo, 3, 0), empty, frame_with_regions(photos["demo2"], 2, 1)]
    stage = Sam2(**TINY, batch_size=3)
    embedded = []
    stage.ensure_loaded()
    embed = stage.segmenter.embed
    stage.segmenter.embed = lambda images: embedded.append(len(images)) or embed(images)
    out = Pipeline([stage], batch_size=3)(frames)
    return out, embedded


def test_masks_have_the_image_size_and_scores(segmented):
    frames, embedded = segmented
    assert embedded == [2]  # one encoder call for the two frames that have regions: one embedding per image
    for frame in (frames[0], frames[2]):
        assert (frame.height, frame.width) == frame.image.shape[:2]
        for region in frame.regions:
            assert region.mask.dtype == bool and region.mask.shape == (frame.height, frame.width)
            assert isinstance(region.mask_score, float) and np.isfinite(region.mask_score)
            assert region.source == "test"  # the localizer's region, enriched in place
        assert any(region.mask.any() for region in frame.regions)
    assert frames[1].regions == [] and frames[1].meta == {}  # no regions: no decoding (the one call above had 2)


def test_chinese_names_follow_tags_onto_masks(segmented):
    for frame in (segmented[0][0], segmented[0][2]):
        *others, last = frame.regions
        assert last.tag_zh == "已有"
        for region in others:
            assert region.tag_zh == ("狗" if region.tag == "dog" else None)


def test_masks_are_rle_in_json_and_decode_back(segmented):
    for frame in (segmented[0][0], segmented[0][2]):
        data = json.loads(frame.to_json())
        back = Frame.from_json(frame.to_json())
        for region, saved, restored in zip(frame.regions, data["regions"], back.regions):
            rle = saved["mask"]
            assert rle["size"] == [frame.height, frame.width] and isinstance(rle["counts"], str)
            decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
            assert np.array_equal(decoded.astype(bool), region.mask)
            assert np.array_equal(restored.mask, region.mask)
            assert saved["mask_score"] == region.mask_score and saved["tag_zh"] == region.tag_zh


def test_stages_with_the_same_weights_share_one_model():
    one, two = Sam2(**TINY), Sam2(**{**TINY, "multimask": False})
    one.ensure_loaded()
    two.ensure_loaded()
    assert one.segmenter.sam is two.segmenter.sam
    other = Sam2(**{**TINY, "seed": 1})
    other.ensure_loaded()
    assert other.segmenter.sam is not one.segmenter.sam


def test_checkpoint_loads_strictly_into_the_configured_model(tmp_path, tiny_sam2):
    path = tmp_path / "tiny.pt"
    torch.save({"model": tiny_sam2.state_dict()}, path)
    stage = Sam2(config=TINY_CONFIG, checkpoint=str(path), device="cpu")
    stage.ensure_loaded()
    for (name, a), b in zip(tiny_sam2.state_dict().items(), stage.segmenter.sam.state_dict().values()):
        assert torch.equal(a, b), name
    wrong = dict(tiny_sam2.state_dict())
    wrong.pop("sam_mask_decoder.iou_token.weight")
    torch.save({"model": wrong}, path)
    shared_models.clear()
    with pytest.raises(ModelFileError, match="does not fit SAM 2 custom: 1 missing keys"):
        Sam2(config=TINY_CONFIG, checkpoint=str(path), device="cpu").ensure_loaded()


def test_missing_official_weights_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    with pytest.raises(ModelFileError) as info:
        Sam2(model="hiera_tiny", device="cpu").ensure_loaded()
    message = str(info.value)
    assert "sam2.1_hiera_tiny.pt" in message and str(tmp_path / "home") in message and "\n" not in message
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt" in message
    with pytest.raises(ModelFileError, match="sam2_hiera_small.pt"):
        Sam2(model="hiera_small", release="2", device="cpu").ensure_loaded()
    with pytest.raises(ModelFileError, match="does not exist"):
        Sam2(model="hiera_tiny", checkpoint=str(tmp_path / "nowhere.pt"), device="cpu").ensure_loaded()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model": "hiera_huge"}, "'hiera_tiny', 'hiera_small', 'hiera_base_plus' or 'hiera_large'"),
        ({"release": "3"}, "'2.1' or '2'"),
        ({"multi_mask": True}, "Extra inputs are not permitted"),
        ({"config": TINY_CONFIG}, "give `checkpoint` or set `weights: random`"),
        ({"batch_size": 0}, "greater than or equal to 1"),
    ],
)
def test_params_are_validated(params, message):
    with pytest.raises(ValidationError, match=message):
        Sam2(**params)


def test_recipe_builds_the_stage_and_names_bad_keys(tmp_path):
    recipe = tmp_path / "segment.yaml"
    recipe.write_text(
        "recipe: 1\nstages:\n  - use: sam2\n    with:\n"
        f"      config: {json.dumps(TINY_CONFIG)}\n      weights: random\n      multimask: false\n"
    )
    pipeline = Pipeline.from_recipe(recipe)
    (stage,) = pipeline.stages
    assert isinstance(stage, Sam2) and stage.params.multimask is False
    assert stage.params.config.stages == (1, 1, 2, 1)
    recipe.write_text("recipe: 1\nstages:\n  - use: sam2\n    with: {model: hiera_tiny, threshold: 0.5}\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.with\.threshold"):
        Pipeline.from_recipe(recipe)


@pytest.mark.parametrize("name", ["tag_ground_segment_sam2", "tag_ground_segment_cpu"])
def test_shipped_recipes_build(name):
    from sam2_support import REPO

    stages = Pipeline.from_recipe(REPO / "recipes" / f"{name}.yaml").stages
    assert [s.name for s in stages][-1] == "sam2" and isinstance(stages[-1], Sam2)


def test_model_files_name_the_official_checkpoint_only_when_it_is_used(tmp_path):
    from recognize.hub import FileRef

    assert Sam2(model="hiera_tiny").model_files() == [FileRef("sam2.1_hiera_tiny", "sam2.1_hiera_tiny.pt")]
    assert Sam2(model="hiera_large", release="2").model_files() == [FileRef("sam2_hiera_large", "sam2_hiera_large.pt")]
    assert Sam2(**TINY).model_files() == [] and Sam2(checkpoint=str(tmp_path / "x.pt")).model_files() == []
