"""`recognize.data_engine.crop_embeddings`: what region_confirm keeps for region_outliers.

The store hands region_outliers the embedding region_confirm computed for a crop in another batch
(confirm batches the crops of an engine batch, outliers those of a tag), so a crop's embedding
must not depend on its batch mates: checked bitwise on the tiny RAM, RAM++ and Tag2Text fixtures.
And it keeps them only for a region_outliers of the same pipeline, and only during its run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from teststages import Explode

from recognize import Frame, Region, Stage, Tag
from recognize.data_engine.confirm_stage import RegionConfirm
from recognize.data_engine.crop_embeddings import crop_embeddings
from recognize.data_engine.outliers_stage import RegionOutliers
from recognize.pipeline import Pipeline
from recognize.taggers.ram_stages import Ram, RamPlus
from recognize.taggers.tag2text_stages import Tag2TextTagger

REPO = Path(__file__).resolve().parents[2]
FIXTURES = Path(os.environ.get("RECOGNIZE_PARITY_FIXTURES", REPO.parent / "shared" / "reference" / "fixtures"))
TAGGERS = {"ram": Ram, "ram_plus": RamPlus, "tag2text": Tag2TextTagger}


def tagger(name: str, batch_size: int):
    folder = FIXTURES / name
    if not (folder / "checkpoint.pth").is_file():
        pytest.skip(f"{name} fixture not found under {FIXTURES}")
    params = {"config": str(folder / "config.json"), "checkpoint": str(folder / "checkpoint.pth"), "device": "cpu",
              "batch_size": batch_size}
    if name != "tag2text":
        params["embedding_cache"] = False
    return TAGGERS[name](**params)


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    """Crops of different sizes and contents, as region boxes give (each resized by the tagger)."""
    rng = np.random.default_rng(0)
    sizes = [(48, 64), (80, 40), (30, 30), (120, 50), (21, 97), (64, 64), (90, 33)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


@pytest.mark.parametrize("name", sorted(TAGGERS))
def test_a_crops_embedding_does_not_depend_on_its_batch_mates(name, crops):
    together = tagger(name, batch_size=32).embed_images(crops)
    alone = np.concatenate([tagger(name, batch_size=32).embed_images([crop]) for crop in crops])
    assert together.shape[0] == len(crops)
    assert np.array_equal(together, alone)


@pytest.mark.parametrize("name", sorted(TAGGERS))
def test_score_and_embed_gives_the_same_embeddings_at_any_batch_size(name, crops):
    """What confirm keeps (`score_and_embed_images`, batch 3) is what outliers would compute itself
    (`embed_images`, one crop at a time). The scores are only close across batch sizes (not
    bitwise); the store does not share them."""
    scores_3, embeddings_3 = tagger(name, batch_size=3).score_and_embed_images(crops)
    scores_1, embeddings_1 = tagger(name, batch_size=1).score_and_embed_images(crops)
    assert np.array_equal(embeddings_3, embeddings_1)
    assert np.array_equal(embeddings_1, tagger(name, batch_size=1).embed_images(crops))
    np.testing.assert_allclose(scores_3, scores_1, rtol=0, atol=1e-5)


# -- what is kept, for whom, and for how long (with the colour tagger of tests/support) ----------


@pytest.fixture
def colour_tagger():
    import colour_tagger

    with colour_tagger.registered():
        yield colour_tagger


class StoreSize(Stage):
    """Records how many embeddings the store holds when the frames reach it."""

    name = "store_size"
    kind = "filter"
    seen: ClassVar[list[int]] = []

    def process(self, frames: list[Frame]) -> list[Frame]:
        StoreSize.seen.append(len(crop_embeddings))
        return frames


def red_frames(count: int = 4) -> list[Frame]:
    frames = []
    for i in range(count):
        image = np.zeros((20, 40, 3), np.uint8)
        image[:, :20] = (200, 10 * i, 10)
        image[:, 20:] = (10, 10, 200 - 10 * i)
        frame = Frame.from_array(image, source=f"<red{i}>", name=f"red{i}", tags=[Tag(name="red")])
        frame.regions = [Region(box=(0, 0, 20, 20), tag="red"), Region(box=(20, 0, 40, 20), tag="red")]
        frames.append(frame)
    return frames


def test_confirm_keeps_embeddings_for_the_outliers_stage_of_its_own_pipeline(colour_tagger):
    StoreSize.seen.clear()
    stages = [RegionConfirm(tagger="colour_tagger", threshold=0.5), StoreSize(),
              RegionOutliers(tagger="colour_tagger", k=1, drop_fraction=0.25)]
    Pipeline(stages, batch_size=2).process(red_frames())
    assert StoreSize.seen == [4, 8]  # every crop confirm encoded (2 frames x 2 regions a batch), for outliers
    assert len(crop_embeddings) == 0


def test_an_outliers_stage_of_another_pipeline_gets_nothing_kept(colour_tagger):
    """A living region_outliers (an older pipeline in a notebook, another serve variant) does not
    make another pipeline's region_confirm keep its embeddings."""
    StoreSize.seen.clear()
    other = Pipeline([RegionOutliers(tagger="colour_tagger")])
    Pipeline([RegionConfirm(tagger="colour_tagger", threshold=0.5), StoreSize()], batch_size=2).process(red_frames())
    assert StoreSize.seen == [0, 0]
    assert colour_tagger.ENCODED  # confirm did encode its crops
    assert other.stages  # still alive during the run


def test_only_a_later_outliers_stage_embedding_with_the_same_tagger_gets_them(colour_tagger):
    confirm = RegionConfirm(tagger="colour_tagger", threshold=0.5)
    cases = [([confirm, RegionOutliers(tagger="colour_tagger", batch_size=3)], True),  # batch size aside
             ([confirm, RegionOutliers(tagger="colour_tagger", tagger_with={"threshold": 0.3})], False),
             ([confirm, RegionOutliers(tagger="colour_tagger", embedder="clip")], False),
             ([RegionOutliers(tagger="colour_tagger"), confirm], False)]
    for stages, kept in cases:
        with crop_embeddings.kept_during(stages):
            assert crop_embeddings.wanted(confirm.tagger) is kept
            assert not crop_embeddings.wanted(RegionConfirm(tagger="colour_tagger").tagger)  # another stage's
        assert not crop_embeddings.wanted(confirm.tagger)


def test_the_store_is_empty_after_a_run_that_failed(colour_tagger):
    StoreSize.seen.clear()
    stages = [RegionConfirm(tagger="colour_tagger", threshold=0.5), StoreSize(), Explode(on="red"),
              RegionOutliers(tagger="colour_tagger")]
    with pytest.raises(RuntimeError, match="exploded on purpose"):
        Pipeline(stages, batch_size=2).process(red_frames())
    assert StoreSize.seen == [4]  # kept for outliers, which never ran
    assert len(crop_embeddings) == 0
