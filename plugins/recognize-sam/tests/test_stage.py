"""End to end on real photos with a tiny, randomly initialised SAM built from SAM's own classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pydantic import ValidationError
from sam_support import TINY, TINY_CONFIG, random_boxes

from recognize import Frame, Pipeline, Region, Tag
from recognize.errors import ModelFileError, RecipeError
from recognize.stage import shared_models
from recognize_sam import Sam


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
def segmented(small_photo, big_photo, photos):
    empty = Frame(source=str(photos["demo2"]))
    frames = [frame_with_regions(small_photo, 3, 0), empty, frame_with_regions(big_photo, 2, 1)]
    stage = Sam(**TINY, batch_size=3)
    embedded = []
    stage.ensure_loaded()
    embed = stage.segmenter.embed
    stage.segmenter.embed = lambda images, resized=None: embedded.append(len(images)) or embed(images, resized)
    out = Pipeline([stage], batch_size=3)(frames)
    return out, embedded


@pytest.mark.slow
def test_masks_have_the_image_size_and_scores(segmented):
    frames, embedded = segmented
    assert embedded == [2]  # one encoder call for the two frames that have regions (the stage's batch_size)
    for frame in (frames[0], frames[2]):
        assert (frame.height, frame.width) == frame.image.shape[:2]
        for region in frame.regions:
            assert region.mask.dtype == bool and region.mask.shape == (frame.height, frame.width)
            assert isinstance(region.mask_score, float) and np.isfinite(region.mask_score)
            assert region.source == "test"  # the localizer's region, enriched in place
        assert any(region.mask.any() for region in frame.regions)
    assert frames[1].regions == [] and frames[1]._image is None  # no regions: no decoding, no embedding


@pytest.mark.slow
def test_chinese_names_follow_tags_onto_masks(segmented):
    for frame in (segmented[0][0], segmented[0][2]):
        *others, last = frame.regions
        assert last.tag_zh == "已有"
        for region in others:
            assert region.tag_zh == ("狗" if region.tag == "dog" else None)


@pytest.mark.slow
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
    one, two = Sam(**TINY), Sam(**{**TINY, "multimask": False})
    one.ensure_loaded()
    two.ensure_loaded()
    assert one.segmenter.sam is two.segmenter.sam
    other = Sam(**{**TINY, "seed": 1})
    other.ensure_loaded()
    assert other.segmenter.sam is not one.segmenter.sam


def test_checkpoint_loads_strictly_into_the_configured_model(tmp_path, tiny_sam):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam.state_dict(), path)
    stage = Sam(config=TINY_CONFIG, checkpoint=str(path), device="cpu")
    stage.ensure_loaded()
    for (name, a), b in zip(tiny_sam.state_dict().items(), stage.segmenter.sam.state_dict().values()):
        assert torch.equal(a, b), name
    wrong = dict(tiny_sam.state_dict())
    wrong.pop("mask_decoder.iou_token.weight")
    torch.save(wrong, path)
    shared_models.clear()
    with pytest.raises(ModelFileError, match="does not fit SAM custom: 1 missing keys"):
        Sam(config=TINY_CONFIG, checkpoint=str(path), device="cpu").ensure_loaded()


def test_one_checkpoint_by_relative_and_absolute_path_is_one_model(tmp_path, tiny_sam, monkeypatch):
    torch.save(tiny_sam.state_dict(), tmp_path / "tiny.pth")
    monkeypatch.chdir(tmp_path)
    relative = Sam(config=TINY_CONFIG, checkpoint="tiny.pth", device="cpu")
    absolute = Sam(config=TINY_CONFIG, checkpoint=str(tmp_path / "tiny.pth"), device="cpu")
    relative.ensure_loaded()
    absolute.ensure_loaded()
    assert relative.segmenter.sam is absolute.segmenter.sam
    shared_models.clear()


def test_missing_official_weights_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECOGNIZE_OFFLINE", "1")
    with pytest.raises(ModelFileError) as info:
        Sam(model="vit_b", device="cpu").ensure_loaded()
    message = str(info.value)
    assert "sam_vit_b_01ec64.pth" in message and str(tmp_path / "home") in message and "\n" not in message
    with pytest.raises(ModelFileError, match="does not exist"):
        Sam(model="vit_b", checkpoint=str(tmp_path / "nowhere.pth"), device="cpu").ensure_loaded()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"model": "vit_x"}, "'vit_h', 'vit_l' or 'vit_b'"),
        ({"multi_mask": True}, "Extra inputs are not permitted"),
        ({"config": TINY_CONFIG}, "give `checkpoint` or set `weights: random`"),
        ({"batch_size": 0}, "greater than or equal to 1"),
    ],
)
def test_params_are_validated(params, message):
    with pytest.raises(ValidationError, match=message):
        Sam(**params)


def test_recipe_builds_the_stage_and_names_bad_keys(tmp_path):
    recipe = tmp_path / "segment.yaml"
    recipe.write_text(
        "recipe: 1\nstages:\n  - use: sam\n    with:\n"
        f"      config: {json.dumps(TINY_CONFIG)}\n      weights: random\n      multimask: false\n"
    )
    pipeline = Pipeline.from_recipe(recipe)
    (stage,) = pipeline.stages
    assert isinstance(stage, Sam) and stage.params.multimask is False
    assert stage.params.config.encoder_depth == 2
    recipe.write_text("recipe: 1\nstages:\n  - use: sam\n    with: {model: vit_h, threshold: 0.5}\n")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.with\.threshold"):
        Pipeline.from_recipe(recipe)


def test_feature_cache_skips_the_image_encoder_for_a_photo_seen_before(small_photo, monkeypatch):
    """Other boxes on the same photo (e.g. other localizer thresholds) reuse the image embedding."""
    from recognize.feature_cache import feature_cache

    monkeypatch.setattr(feature_cache, "max_bytes", 64 * 2**20)
    stage = Sam(**TINY)
    stage.ensure_loaded()
    encoder_calls = []
    hook = stage.segmenter.sam.image_encoder.register_forward_hook(lambda *args: encoder_calls.append(1))
    try:
        first = stage([frame_with_regions(small_photo, 2, 0)])[0]
        second = stage([frame_with_regions(small_photo, 3, 5)])[0]
        monkeypatch.setattr(feature_cache, "max_bytes", 0)
        fresh = stage([frame_with_regions(small_photo, 3, 5)])[0]
    finally:
        hook.remove()
        feature_cache.clear()
    assert len(encoder_calls) == 2  # the first and the uncached call, not the second
    assert len(first.regions) == 2 and len(second.regions) == 3
    for cached, computed in zip(second.regions, fresh.regions):
        np.testing.assert_array_equal(cached.mask, computed.mask)


def test_an_image_resized_ahead_gives_the_same_masks_and_is_not_resized_again(small_photo, monkeypatch):
    """`prepare` (run by an engine's prefetch thread) makes SAM's 1024 px input; `process` takes it."""
    from segment_anything.utils.transforms import ResizeLongestSide

    stage = Sam(**TINY)
    plain = stage([frame_with_regions(small_photo, 3, 0)])[0]
    ahead = frame_with_regions(small_photo, 3, 0)
    stage.prepare(ahead)
    monkeypatch.setattr(ResizeLongestSide, "apply_image", lambda *args: pytest.fail("resized again"))
    ahead = stage([ahead])[0]
    assert len(ahead.regions) == 3
    for a, b in zip(ahead.regions, plain.regions):
        assert np.array_equal(a.mask, b.mask) and a.mask_score == b.mask_score
