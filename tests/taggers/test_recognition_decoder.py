"""The recognition decoder against the official RAM++ intermediates (queries + image tokens -> embeddings)."""

from __future__ import annotations

import json

import torch
from tiny_decoder import tiny_decoder  # tests/support

from recognize.taggers.checkpoint import read_checkpoint
from recognize.taggers.recognition_decoder import DecoderConfig, RecognitionDecoder


def test_decoder_matches_official_tagging_embeddings(ram_plus_fixture):
    config = json.loads((ram_plus_fixture / "config.json").read_text())
    decoder = RecognitionDecoder(DecoderConfig.from_bert_config(config["q2l_config"], config["q2l_effective_encoder_width"]))
    state = read_checkpoint(ram_plus_fixture / "checkpoint.pth")
    mapping = decoder.official_keys("tagging_head")
    decoder.load_state_dict({ours: state[theirs] for ours, theirs in mapping.items()}, strict=True)
    inter = torch.load(ram_plus_fixture / "intermediates.pt", weights_only=True)
    with torch.no_grad():
        out = decoder.eval()(inter["label_queries"], inter["image_embeds"])
    assert out.shape == inter["tagging_embed"].shape
    assert (out - inter["tagging_embed"]).abs().max() < 1e-5


def test_shared_queries_are_broadcast_over_the_batch():
    decoder = tiny_decoder(hidden=16, layers=1, encoder_width=8)
    queries, tokens = torch.randn(5, 16), torch.randn(3, 7, 8)
    with torch.no_grad():
        shared = decoder(queries, tokens)
        explicit = decoder(queries.expand(3, -1, -1), tokens)
    assert shared.shape == (3, 5, 16) and torch.allclose(shared, explicit)
