"""Tiling finds what the whole-image pass cannot see, maps boxes back exactly and merges duplicates."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from recognize import Frame, Pipeline, Tag
from recognize.errors import RecipeError
from recognize_tiles import Tiled

BLOBS = {"use": "colour_blobs", "with": {"input_size": 128, "min_pixels": 4}}


def big_scene() -> np.ndarray:
    """2000 x 1600 grey; a 16 px red square (0.064 px at the localizer's 128 px view) and a big blue one."""
    image = np.full((1600, 2000, 3), 128, np.uint8)
    image[1000:1016, 1500:1516] = (255, 0, 0)
    image[100:700, 200:800] = (0, 0, 255)  # 600 px: seen whole, and cut apart by the slices
    return image


def frame() -> Frame:
    return Frame.from_array(big_scene(), source="scene", tags=[Tag(name="red", name_zh="红"), Tag(name="blue")])


def boxes_of(frame: Frame, tag: str) -> list[tuple[float, ...]]:
    return [r.box for r in frame.regions if r.tag == tag]


def test_the_whole_image_pass_misses_the_small_object(blob_plugin):
    from blob_localizer import ColourBlobs

    (alone,) = Pipeline([ColourBlobs(**BLOBS["with"])])([frame()])
    assert boxes_of(alone, "red") == [] and len(boxes_of(alone, "blue")) == 1


def test_tiles_find_it_and_map_it_back(blob_plugin):
    stage = Tiled(localizer=BLOBS, tile=256, overlap=64)
    (out,) = Pipeline([stage])([frame()])
    (red,) = [r for r in out.regions if r.tag == "red"]
    # the slice's 128 px view of a 256 px tile is half size: the 16 px square is 8 px there,
    # so the box is exact to the localizer's 2 px resolution, in the image's coordinates
    np.testing.assert_allclose(red.box, (1500, 1000, 1516, 1016), atol=2)
    assert red.tag_zh == "红" and red.source == "colour_blobs"


def test_duplicates_across_slices_and_whole_image_are_merged(blob_plugin):
    """With `nmm`, the blue square's pieces (slices cut it) and the whole-image box become one."""
    (nms,) = Pipeline([Tiled(localizer=BLOBS, tile=256, overlap=64, merge="nms", iou_threshold=0.5)])([frame()])
    (nmm,) = Pipeline([Tiled(localizer=BLOBS, tile=256, overlap=64, merge="nmm", iou_threshold=0.0)])([frame()])
    assert len(boxes_of(nms, "blue")) >= 1
    whole = boxes_of(nms, "blue")
    assert any(np.allclose(box, (200, 100, 800, 700), atol=16) for box in whole)  # the whole-image box is kept
    (merged,) = boxes_of(nmm, "blue")
    np.testing.assert_allclose(merged, (200, 100, 800, 700), atol=16)


def test_every_box_is_inside_the_image_and_no_pass_is_duplicated(blob_plugin):
    stage = Tiled(localizer=BLOBS, tile=256, overlap=64, whole_image=False)
    (out,) = Pipeline([stage])([frame()])
    assert boxes_of(out, "red")
    for region in out.regions:
        x0, y0, x1, y1 = region.box
        assert 0 <= x0 < x1 <= 2000 and 0 <= y0 < y1 <= 1600
    # a small red square seen by overlapping slices is one region after NMS
    assert len(boxes_of(out, "red")) == 1


def test_small_images_are_not_sliced(blob_plugin):
    calls = []
    stage = Tiled(localizer=BLOBS, tile=4096)
    stage.ensure_loaded()
    process = stage.inner.process
    stage.inner.process = lambda frames: calls.append(len(frames)) or process(frames)
    Pipeline([stage])([frame()])
    assert calls == [1]  # the whole image, once


def test_slices_are_batched(blob_plugin):
    calls = []
    stage = Tiled(localizer=BLOBS, tile=1000, overlap=0, batch_size=4, whole_image=False)
    stage.ensure_loaded()
    process = stage.inner.process
    stage.inner.process = lambda frames: calls.append(len(frames)) or process(frames)
    Pipeline([stage])([frame()])
    assert calls == [4]  # 2 x 2 slices in one call


def test_the_device_reaches_the_inner_stage(blob_plugin):
    stage = Tiled(localizer=BLOBS, tile=256)
    Pipeline([stage], device="cpu")
    assert stage.inner.params.device == "cpu"
    own = Tiled(localizer={"use": "colour_blobs", "with": {"device": "mps"}}, device="cpu")
    assert own.inner.params.device == "mps"  # the localizer's own setting wins


def test_describe_round_trips_through_a_recipe_entry(blob_plugin):
    stage = Tiled(localizer=BLOBS, tile=256)
    described = stage.describe()
    assert described["with"]["localizer"] == BLOBS
    again = Tiled(**described["with"])
    assert again.params == stage.params


@pytest.mark.parametrize(
    "params, message",
    [
        ({"localizer": {"use": "colour_blob"}}, "unknown stage 'colour_blob'; did you mean 'colour_blobs'"),
        ({"localizer": {"use": "colour_blobs", "with": {"min_pixel": 2}}},
         "with.min_pixel: unknown parameter of colour_blobs; did you mean 'min_pixels'"),
        ({"localizer": {"use": "colour_blobs", "with": {"min_pixels": "many"}}}, "with.min_pixels: Input should be"),
        ({"localizer": {"use": "tiled"}}, "cannot wrap itself"),
        ({"localizer": BLOBS, "overlap": 640}, "smaller than the tile"),
        ({"localizer": BLOBS, "merge": "mean"}, "'nms' or 'nmm'"),
    ],
)
def test_params_are_validated_against_the_inner_stage(blob_plugin, params, message):
    with pytest.raises(ValidationError, match=message):
        Tiled(**params)


def test_a_segmenter_is_not_a_localizer(blob_plugin):
    from recognize import plugins

    segmenters = [name for name, cls in plugins.stages().items() if cls.kind == "segmenter"]
    if not segmenters:
        pytest.skip("no segmenter stage installed")
    with pytest.raises(ValidationError, match="is a segmenter stage; `tiled` runs a localizer"):
        Tiled(localizer={"use": segmenters[0]})


def test_recipe_error_names_the_inner_parameter(blob_plugin, tmp_path):
    recipe = tmp_path / "tiled.yaml"
    recipe.write_text(
        "recipe: 1\nstages:\n  - use: tiled\n    with:\n      tile: 256\n"
        "      localizer: {use: colour_blobs, with: {min_pixel: 2}}\n"
    )
    with pytest.raises(RecipeError) as info:
        Pipeline.from_recipe(recipe)
    message = str(info.value)
    assert "stages[0].with.localizer" in message and "with.min_pixel" in message and "'min_pixels'" in message
    assert "\n" not in message
    recipe.write_text("recipe: 1\nstages:\n  - use: tiled\n    with:\n      localizer: {use: colour_blobs}\n")
    (stage,) = Pipeline.from_recipe(recipe).stages
    assert isinstance(stage, Tiled) and stage.inner.name == "colour_blobs"


def test_shipped_tiled_recipe_builds():
    from pathlib import Path

    pytest.importorskip("recognize_grounding_dino")
    recipe = Path(__file__).resolve().parents[3] / "recipes" / "tag_ground_segment_tiled.yaml"
    stages = Pipeline.from_recipe(recipe).stages
    tiled = next(s for s in stages if isinstance(s, Tiled))
    assert tiled.inner.name == "grounding_dino" and tiled.params.tile == (800, 800)
