"""Building, loading and tokenizer checks (recognize_grounding_dino.model)."""

from __future__ import annotations

import argparse
import socket

import pytest
import torch
from safetensors.torch import load_file

from recognize.errors import ModelFileError, RecognizeError
from recognize_grounding_dino.model import (
    Detector, build_config, build_model, config_values, load_tokenizer, load_weights, read_state_dict,
)


def test_construction_never_touches_the_network(tiny_checkpoint, vocab, tiny, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during construction")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    detector = Detector.load("swint_ogc", tiny_checkpoint, vocab, config=tiny)
    assert detector.model.config.text_config.hidden_size == 32
    assert detector.tokenizer.convert_tokens_to_ids("[CLS]") == 101


def test_presets_are_the_released_architectures():
    tiny_t = build_config("swint_ogc")
    base = build_config("swinb")
    assert (tiny_t.backbone_config.embed_dim, tiny_t.backbone_config.window_size) == (96, 7)
    assert (base.backbone_config.embed_dim, list(base.backbone_config.depths)) == (128, [2, 2, 18, 2])
    for config in (tiny_t, base):
        assert (config.d_model, config.num_queries, config.max_text_len) == (256, 900, 256)
        assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (768, 12)
        assert config.two_stage and not config.two_stage_bbox_embed_share and config.decoder_bbox_embed_share
    # a config overrides the preset field by field, nested dicts included
    values = config_values("swinb", {"num_queries": 10, "backbone_config": {"depths": [1, 1, 1, 1]}})
    assert values["num_queries"] == 10 and values["backbone_config"]["embed_dim"] == 128
    with pytest.raises(RecognizeError):
        build_config("swint_ogc", {"backbone_config": {"model_type": "no-such-model"}})


def test_weights_stored_once_for_tied_heads_still_load(tiny_checkpoint, tiny):
    # safetensors (like transformers' save_pretrained) keeps one name for the box head that all
    # decoder layers share; the other names are filled from it, nothing else is
    state = read_state_dict(tiny_checkpoint)
    model = build_model(build_config("swint_ogc", tiny), init_weights=False)
    expected = model.state_dict()
    absent = sorted(set(expected) - set(state))
    assert absent and all("bbox_embed" in k for k in absent)
    load_weights(model, state, "tied")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    stored = {loaded[k].data_ptr() for k in state}
    assert all(loaded[k].data_ptr() in stored for k in absent)  # each absent name aliases a stored tensor


def test_missing_or_foreign_weights_are_one_line_errors(tiny_checkpoint, tiny, tmp_path):
    state = load_file(str(tiny_checkpoint))
    model = build_model(build_config("swint_ogc", tiny), init_weights=False)
    partial = {k: v for k, v in state.items() if "text_projection" not in k}
    with pytest.raises(ModelFileError, match=r"missing \(first: model.text_projection"):
        load_weights(model, partial, "partial.pth")
    with pytest.raises(ModelFileError, match=r"1 unexpected \(first: extra.weight\)"):
        load_weights(model, {**state, "extra.weight": torch.zeros(1)}, "x.pth")

    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError) as error:
        read_state_dict(broken)
    assert str(broken) in str(error.value) and "\n" not in str(error.value)
    # pickled Python objects are refused: checkpoints load with weights_only=True
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, pickled)
    with pytest.raises(ModelFileError, match=r"refused: .* objects other than tensors \(argparse\.Namespace\)"):
        read_state_dict(pickled)


def test_the_vocab_must_keep_bert_delimiter_ids(vocab, tmp_path):
    tokens = vocab.read_text().splitlines()
    tokens[1012], tokens[1013] = tokens[1013], tokens[1012]  # "." moves
    moved = tmp_path / "vocab.txt"
    moved.write_text("\n".join(tokens) + "\n")
    with pytest.raises(ModelFileError, match=r"'\.' must have id 1012"):
        load_tokenizer(moved)
    assert load_tokenizer(vocab).convert_tokens_to_ids("?") == 1029
