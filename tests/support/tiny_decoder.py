"""A seeded, randomly initialised `RecognitionDecoder` of toy size, for the taggers' decoder tests."""

from __future__ import annotations

import torch

from recognize.taggers.recognition_decoder import DecoderConfig, RecognitionDecoder


def tiny_decoder(hidden: int, layers: int, encoder_width: int, heads: int = 2) -> RecognitionDecoder:
    """An eval-mode decoder with `heads` heads and a feed-forward twice `hidden` wide; seeds torch with 0
    first, so the caller's following random inputs are seeded too."""
    torch.manual_seed(0)
    return RecognitionDecoder(DecoderConfig(hidden_size=hidden, num_layers=layers, num_heads=heads,
                                            intermediate_size=2 * hidden, encoder_width=encoder_width)).eval()
