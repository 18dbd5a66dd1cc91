"""The data-engine stages keep the plugin contract (recognize.testing), with the pixel-based
colour tagger (tests/support/colour_tagger.py) standing in for RAM."""

from __future__ import annotations

import numpy as np
import pytest

from recognize import Frame, Region, Tag
from recognize.data_engine.confirm_stage import RegionConfirm
from recognize.data_engine.merge_tags_stage import MergeTags
from recognize.data_engine.outliers_stage import RegionOutliers
from recognize.stage import shared_models
from recognize.testing import check_stage


@pytest.fixture(autouse=True)
def colour_tagger():
    import colour_tagger

    with colour_tagger.registered():
        yield colour_tagger
    shared_models.clear()


def coloured_frames(count: int = 4) -> list[Frame]:
    """Frames with a red, a green and a blue third; regions for each third tagged red or blue, so
    some are confirmed and some not."""
    rng = np.random.default_rng(5)
    frames = []
    for i in range(count):
        width = 60 + 15 * i
        image = np.zeros((40, width, 3), np.uint8)
        third = width // 3
        image[:, :third] = (rng.integers(180, 230), 20, 20)
        image[:, third:2 * third] = (20, rng.integers(180, 230), 20)
        image[:, 2 * third:] = (20, 20, rng.integers(180, 230))
        frame = Frame.from_array(image, source=f"<coloured{i}>", name=f"coloured{i}",
                                 tags=[Tag(name="red"), Tag(name="blue")])
        frame.regions = [Region(box=(0, 0, third, 40), tag="red"), Region(box=(third, 0, 2 * third, 40), tag="red"),
                         Region(box=(2 * third, 0, width, 40), tag="blue"),
                         Region(box=(0, 0, 2 * third, 40), tag="blue")]
        frames.append(frame)
    return frames


@pytest.mark.parametrize("drop_tags", ["none", "rejected"])
def test_region_confirm_keeps_the_contract(drop_tags):
    out = check_stage(lambda: RegionConfirm(tagger="colour_tagger", padding=0.0, drop_tags=drop_tags, batch_size=3),
                      coloured_frames())
    assert any(f.dropped for f in out) and any(f.regions for f in out)  # both outcomes were compared


def test_region_outliers_keeps_the_contract():
    out = check_stage(lambda: RegionOutliers(tagger="colour_tagger", k=1, drop_fraction=0.25, padding=0.0),
                      coloured_frames(6))
    assert any(d.reason for f in out for d in f.dropped)


def test_merge_tags_keeps_the_contract(tmp_path):
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("red\nblue\ngreen\ndog\n", encoding="utf-8")
    frames = coloured_frames(3)
    for frame, caption in zip(frames, ["a green dog", "blue", None]):
        frame.caption = caption
    out = check_stage(lambda: MergeTags(parse_frame_caption=True, vocabulary=str(vocabulary)), frames)
    assert out[0].tag_names == ["red", "blue", "green", "dog"]
