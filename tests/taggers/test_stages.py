"""The ram / ram_plus stages: thresholds, overrides, include / exclude, open set, dtype, batching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from recognize import plugins
from recognize.errors import ModelFileError, RecognizeError
from recognize.frame import Frame
from recognize.stage import shared_models
from recognize.taggers.openset import ClipTextEncoder, EmbeddingCache, name_embeddings, template_sentences
from recognize.taggers.ram_stages import Ram, RamPlus


def _stage(folder, cls=RamPlus, **params):
    params = {"embedding_cache": False, **params}
    return cls(config=str(folder / "config.json"), checkpoint=str(folder / "checkpoint.pth"), device="cpu", **params)


def test_registered_as_tagger_stages():
    registry = plugins.stages()
    assert registry["ram"] is Ram and registry["ram_plus"] is RamPlus
    assert Ram.kind == "tagger"


def test_params_are_validated():
    with pytest.raises(ValidationError, match="threshold"):
        Ram(threshold=1.5)
    with pytest.raises(ValidationError, match="image_size"):
        Ram(image_size=512)
    with pytest.raises(ValidationError, match="descriptions"):
        Ram(descriptions="x.json")  # RAM++ only


def test_tags_follow_thresholds_and_overrides(ram_plus_fixture, small_images):
    base = _stage(ram_plus_fixture)
    scores = base.score_images(small_images)
    assert scores.shape == (3, 64) and scores.dtype == np.float32
    vocab = base.vocabulary
    tags = base.tags_for_scores(scores)
    for row, image_tags in zip(scores, tags):
        expected = [i for i in range(64) if row[i] > vocab.thresholds[i]]
        assert [t.index for t in image_tags] == expected  # class-index order, strict >
        assert all(t.name == vocab.names[t.index] and t.name_zh == vocab.names_zh[t.index].strip() for t in image_tags)

    everything = _stage(ram_plus_fixture, threshold=0.0)
    everything.ensure_loaded()
    assert all(len(row) == 64 for row in everything.tags_for_scores(scores))

    top = int(np.argmax(scores[0]))
    name = vocab.names[top]
    raised = _stage(ram_plus_fixture, thresholds={name: 1.0})
    raised.ensure_loaded()
    assert name not in [t.name for t in raised.tags_for_scores(scores)[0]]

    low = int(np.argmin(scores[0]))
    lowered = _stage(ram_plus_fixture, thresholds={vocab.names[low]: 0.0})
    lowered.ensure_loaded()
    assert vocab.names[low] in [t.name for t in lowered.tags_for_scores(scores)[0]]


def test_include_and_exclude(ram_plus_fixture, small_images):
    names = _stage(ram_plus_fixture, threshold=0.0)
    names.ensure_loaded()
    vocab = names.vocabulary
    include = [vocab.names[3], vocab.names[10]]
    stage = _stage(ram_plus_fixture, threshold=0.0, include=include, exclude=[vocab.names[10]])
    frames = stage([Frame.from_array(im) for im in small_images])
    assert all(f.tag_names == [vocab.names[3]] for f in frames)


def test_unknown_tag_is_a_one_line_error(ram_plus_fixture):
    stage = _stage(ram_plus_fixture, exclude=["airshipp"])
    with pytest.raises(RecognizeError) as err:
        stage.ensure_loaded()
    assert "airshipp" in str(err.value) and "airship" in str(err.value) and "\n" not in str(err.value)


def test_batch_equals_one_by_one(ram_plus_fixture, small_images):
    batched = _stage(ram_plus_fixture, batch_size=3).score_images(small_images)
    single = _stage(ram_plus_fixture, batch_size=1).score_images(small_images)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_bfloat16_runs_close_to_float32(ram_plus_fixture, small_images):
    fp32 = _stage(ram_plus_fixture).score_images(small_images)
    stage = _stage(ram_plus_fixture, dtype="bfloat16")
    bf16 = stage.score_images(small_images)
    assert next(stage.model.parameters()).dtype == torch.bfloat16
    assert np.abs(bf16 - fp32).max() < 0.1


def test_model_is_shared_between_stages(ram_plus_fixture):
    shared_models.clear()
    a, b = _stage(ram_plus_fixture), _stage(ram_plus_fixture, threshold=0.9)
    a.ensure_loaded()
    b.ensure_loaded()
    assert a.model is b.model


def test_embed_images_are_unit_vectors(ram_plus_fixture, small_images):
    emb = _stage(ram_plus_fixture).embed_images(small_images)
    assert emb.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_tag_list_length_must_match_the_model(ram_plus_fixture, tmp_path):
    short = tmp_path / "tags.txt"
    short.write_text("a\nb\n")
    thresholds = tmp_path / "thr.txt"
    thresholds.write_text("0.5\n0.5\n")
    stage = _stage(ram_plus_fixture, tag_list=str(short), tag_list_zh=str(short), threshold_file=str(thresholds))
    with pytest.raises(ModelFileError, match="2 tags but the model has 64 classes"):
        stage.ensure_loaded()


def _tiny_encoder(tiny_clip) -> ClipTextEncoder:
    name, weights = tiny_clip
    return ClipTextEncoder.open_clip_model(name, weights)


@pytest.mark.slow
def test_openset_ram_with_template_embeddings(ram_fixture, tiny_clip, small_images, tmp_path, monkeypatch):
    monkeypatch.setenv("RECOGNIZE_HOME", str(tmp_path / "home"))
    name, weights = tiny_clip
    tags = ["Aerial photography", "apple", "red_fox"]
    stage = _stage(ram_fixture, cls=Ram, tags=tags, clip_model=name, clip_checkpoint=str(weights),
                   embedding_cache=True, thresholds={"apple": 0.3})
    scores = stage.score_images(small_images)
    assert scores.shape == (3, 3)
    assert stage.vocabulary.names == tags
    np.testing.assert_array_equal(stage.vocabulary.thresholds, np.array([0.5, 0.3, 0.5], dtype=np.float32))
    # the same computation by hand: templates -> encode -> normalise -> mean -> normalise
    encoder = _tiny_encoder(tiny_clip)
    embed = name_embeddings(tags, encoder)
    by_hand = torch.stack([encoder.encode(template_sentences(t)).mean(dim=0) for t in tags])
    torch.testing.assert_close(embed, by_hand / by_hand.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    with torch.no_grad():
        expected = torch.sigmoid(stage.model(stage.pixels(small_images), embed, 3)).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    frames = stage([Frame.from_array(im) for im in small_images])
    for frame, row in zip(frames, scores):
        assert [t.index for t in frame.tags] == [i for i in range(3) if row[i] > [0.5, 0.3, 0.5][i]]
        assert all(t.name_zh is None for t in frame.tags)
    assert len(list((tmp_path / "home" / "embeddings").glob("*.pt"))) == 1  # cached on disk


def test_openset_ram_plus_with_descriptions(ram_plus_fixture, tiny_clip, small_images, tmp_path):
    name, weights = tiny_clip
    path = tmp_path / "descriptions.json"
    items = [{"Ale": ["a photo of a ale.", "A golden drink.", "Foam on top."]},
             {"Aloe": ["a photo of a aloe.", "A spiky plant.", "Green leaves."]}]
    path.write_text(json.dumps(items))
    stage = _stage(ram_plus_fixture, descriptions=str(path), clip_model=name, clip_checkpoint=str(weights))
    scores = stage.score_images(small_images)
    assert stage.vocabulary.names == ["Ale", "Aloe"] and scores.shape == (3, 2)
    encoder = _tiny_encoder(tiny_clip)
    embed = encoder.encode([d for item in items for d in next(iter(item.values()))])  # [6, 512], normalised each
    with torch.no_grad():
        expected = torch.sigmoid(stage.model(stage.pixels(small_images), embed, 2)).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-5)

    items[1]["Aloe"].pop()
    path.write_text(json.dumps(items))
    bad = _stage(ram_plus_fixture, descriptions=str(path), clip_model=name, clip_checkpoint=str(weights))
    with pytest.raises(RecognizeError, match="same number of descriptions"):
        bad.ensure_loaded()


def test_embedding_cache_is_keyed_by_texts_and_encoder(tmp_path):
    cache = EmbeddingCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(2, 3)

    first = cache.get_or_compute("enc-a", "m", ["x", "y"], compute)
    again = cache.get_or_compute("enc-a", "m", ["x", "y"], compute)
    cache.get_or_compute("enc-b", "m", ["x", "y"], compute)
    cache.get_or_compute("enc-a", "m", ["x", "z"], compute)
    assert torch.equal(first, again) and len(calls) == 3


def test_released_defaults_need_the_hub_files_offline(cache_home):
    stage = Ram(device="cpu")
    with pytest.raises(ModelFileError) as err:
        stage.ensure_loaded()
    assert "ram_swin_large_14m.pth" in str(err.value) and "\n" not in str(err.value)


def test_an_image_resized_ahead_gives_the_same_tags_and_is_not_resized_again(ram_plus_fixture, small_images,
                                                                              monkeypatch):
    """`prepare` (run by an engine's prefetch thread) makes the 384x384 input; `process` takes it."""
    import recognize.taggers.preprocess

    stage = _stage(ram_plus_fixture, threshold=0.0)
    plain = stage([Frame.from_array(image) for image in small_images])
    ahead = [Frame.from_array(image) for image in small_images]
    for frame in ahead:
        stage.prepare(frame)
    monkeypatch.setattr(recognize.taggers.preprocess, "resize_image", lambda *args: pytest.fail("resized again"))
    ahead = stage(ahead)
    assert [[(t.name, t.score) for t in f.tags] for f in ahead] == [[(t.name, t.score) for t in f.tags] for f in plain]
    assert all(len(f.tags) == 64 for f in ahead)
