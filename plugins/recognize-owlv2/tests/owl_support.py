"""Constants and helpers shared by this distribution's tests (a unique module name, not `conftest`)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))

#: OWLv2 with a 2-layer, 32-wide ViT on 128 px (8 x 8 patches) and a 1-layer text tower:
#: transformers' own classes, cheap enough for this CPU.
TINY_CONFIG = {
    "projection_dim": 32,
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
                      "patch_size": 16, "image_size": 128},
}
TINY = {"config": TINY_CONFIG, "weights": "random", "seed": 0, "device": "cpu", "box_threshold": 0.0}


def clip_tokenizer():
    """transformers' CLIPTokenizer on the CLIP BPE table open_clip ships (the hub's files are out of reach)."""
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    table = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(token, token): index for token, index in table.encoder.items()}
    merges = [tuple(pair) for pair, _ in sorted(table.bpe_ranks.items(), key=lambda item: item[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token="!")
