"""Official-output parity of RAM and RAM++ on every fixture folder (tiny random models, official layout).

Each folder under $RECOGNIZE_PARITY_FIXTURES (default ../shared/reference/fixtures) whose config.json
says `ram` or `ram_plus` is rebuilt from its config, loaded from checkpoint.pth through our loader,
and compared with the official scores and tag strings: from the stored input tensors, and from the
jpg files through our own preprocessing and stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from parity import FIXTURES, TOLERANCE, ParityFixture, fixture_folders

from recognize.frame import Frame
from recognize.stage import shared_models
from recognize.taggers.checkpoint import load_official
from recognize.taggers.ram import RamConfig, build_model
from recognize.taggers.ram_stages import Ram, RamPlus
from recognize.taggers.vocabulary import Vocabulary



FOLDERS = fixture_folders("ram", "ram_plus")
pytestmark = pytest.mark.skipif(not FOLDERS, reason=f"no RAM/RAM++ parity fixtures under {FIXTURES}")


class Fixture(ParityFixture):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.variant = self.config["model"]

    def vocabulary(self) -> Vocabulary:
        return Vocabulary.from_files(self.asset("tag_list"), self.asset("tag_list_chinese"), self.asset("threshold_file"))

    def stage(self, **params):
        cls = RamPlus if self.variant == "ram_plus" else Ram
        return cls(config=str(self.folder / "config.json"), checkpoint=str(self.folder / "checkpoint.pth"),
                   device="cpu", embedding_cache=False, **params)


_models: dict[Path, torch.nn.Module] = {}


def _model(fx: Fixture) -> torch.nn.Module:
    if fx.folder not in _models:
        model = build_model(RamConfig.from_fixture_config(fx.config)).eval()
        load_official(model, fx.folder / "checkpoint.pth", model.key_spec())
        _models[fx.folder] = model
    return _models[fx.folder]


_scores: dict[Path, np.ndarray] = {}


def _input_scores(fx: Fixture) -> np.ndarray:
    """Scores of the stored input tensors (computed once per fixture)."""
    if fx.folder not in _scores:
        with torch.no_grad():
            _scores[fx.folder] = torch.sigmoid(_model(fx)(fx.inputs["images"])).numpy()
    return _scores[fx.folder]


@pytest.fixture(scope="module", params=FOLDERS, ids=[f.name for f in FOLDERS])
def fx(request) -> Fixture:
    return Fixture(request.param)


def _strings(vocab: Vocabulary, indices: list[np.ndarray], chinese: bool = False) -> list[str]:
    return [vocab.official_strings(list(i), chinese=chinese) for i in indices]


def test_parity_scores_and_tags_from_input_tensors(fx):
    scores = _input_scores(fx)
    assert np.abs(scores - fx.tensors["scores"].numpy()).max() <= TOLERANCE
    vocab = fx.vocabulary()
    np.testing.assert_array_equal(vocab.thresholds, fx.tensors["class_threshold"].numpy())
    indices = vocab.predict(scores)
    assert [list(map(int, i)) for i in indices] == fx.expected["predicted_indices"]
    assert _strings(vocab, indices) == fx.expected["tags"]
    assert _strings(vocab, indices, chinese=True) == fx.expected["tags_chinese"]


def test_parity_from_jpg_files_through_the_stage(fx):
    shared_models.clear()
    stage = fx.stage()
    frames = stage([Frame(source=str(p)) for p in fx.images()])
    scores = stage.score_images([f.image for f in frames])
    assert np.abs(scores - fx.tensors["scores"].numpy()).max() <= TOLERANCE
    vocab = stage.vocabulary
    for frame, english, chinese, expected_idx in zip(
        frames, fx.expected["tags"], fx.expected["tags_chinese"], fx.expected["predicted_indices"]
    ):
        assert [t.index for t in frame.tags] == expected_idx
        assert " | ".join(t.name for t in frame.tags) == english
        assert vocab.official_strings([t.index for t in frame.tags], chinese=True) == chinese
        assert [t.name_zh for t in frame.tags] == [vocab.names_zh[i].strip() for i in expected_idx]
        assert all(t.source == stage.name for t in frame.tags)


def test_parity_preprocessing_from_jpg_files(fx):
    from recognize.images import load_image
    from recognize.taggers.preprocess import preprocess, resize_image

    images = [load_image(p) for p in fx.images()]
    size = int(fx.config["image_size"])
    resized = np.stack([np.asarray(resize_image(im, size)) for im in images]).astype(int)
    assert np.abs(resized - fx.inputs["resized_uint8_hwc"].numpy().astype(int)).max() <= 2
    assert (preprocess(images, size) - fx.inputs["images"]).abs().max() <= 0.05


def test_parity_batch_of_one(fx):
    model, vocab = _model(fx), fx.vocabulary()
    for i, expected in enumerate(fx.expected["per_image_batch_of_one"]):
        with torch.no_grad():
            scores = torch.sigmoid(model(fx.inputs["images"][i : i + 1])).numpy()
        assert np.abs(scores[0] - fx.tensors["scores"][i].numpy()).max() <= TOLERANCE
        idx = vocab.predict(scores)
        assert _strings(vocab, idx) == [expected["tags"]]
        assert _strings(vocab, idx, chinese=True) == [expected["tags_chinese"]]


def test_parity_delete_tag_index_variant(fx):
    variant = fx.expected["delete_tag_index_variant"]
    vocab = fx.vocabulary()
    allowed = np.ones(len(vocab), dtype=bool)
    allowed[variant["delete_tag_index"]] = False
    indices = vocab.predict(_input_scores(fx), allowed)
    assert _strings(vocab, indices) == variant["tags"]
    assert _strings(vocab, indices, chinese=True) == variant["tags_chinese"]
    # the user-facing form of delete_tag_index: `exclude` by name, through the stage
    names = [vocab.names[i] for i in variant["delete_tag_index"]]
    if all(len(vocab.indices_of(n)) == 1 for n in names):
        stage = fx.stage(exclude=names)
        stage.ensure_loaded()
        tags = stage.tags_for_scores(_input_scores(fx))
        assert [" | ".join(t.name for t in row) for row in tags] == variant["tags"]


def test_parity_openset_variant(fx):
    openset = torch.load(fx.folder / "openset.pt", weights_only=True)
    variant = fx.expected["openset_variant"]
    names = list(openset["categories"])
    with torch.no_grad():
        scores = torch.sigmoid(_model(fx)(fx.inputs["images"], openset["label_embed"], len(names))).numpy()
    assert np.abs(scores - openset["scores"].numpy()).max() <= TOLERANCE
    vocab = Vocabulary(names, None, np.full(len(names), variant["threshold"], dtype=np.float32))
    np.testing.assert_array_equal(vocab.thresholds, openset["class_threshold"].numpy())
    assert _strings(vocab, vocab.predict(scores)) == variant["tags"]


PLUS_FOLDERS = [f for f in FOLDERS if json.loads((f / "config.json").read_text(encoding="utf-8"))["model"] == "ram_plus"]


@pytest.mark.parametrize("folder", PLUS_FOLDERS, ids=[f.name for f in PLUS_FOLDERS])
def test_parity_ram_plus_description_weights(folder):
    fx = Fixture(folder)
    model = _model(fx)
    with torch.no_grad():
        embeds = model.encode_image(fx.inputs["images"])
        weights = model.description_weights(embeds, model.label_embed, model.config.num_classes)
    assert (weights - fx.tensors["description_weights"]).abs().max() <= TOLERANCE
