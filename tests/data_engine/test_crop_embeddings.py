"""`recognize.data_engine.crop_embeddings`: what region_confirm keeps for region_outliers.

The store hands region_outliers the embedding region_confirm computed for a crop in another batch
(confirm batches the crops of an engine batch, outliers those of a tag), so a crop's embedding
must not depend on its batch mates: checked bitwise on the tiny RAM, RAM++ and Tag2Text fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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
