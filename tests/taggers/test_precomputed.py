"""Image-independent results kept between calls: reused only while their inputs are the same, unmodified."""

from __future__ import annotations

import torch

from recognize.taggers import precomputed
from recognize.taggers.precomputed import Precomputed
from recognize.taggers.recognition_decoder import DecoderConfig, RecognitionDecoder


def _counting(cache: Precomputed, inputs, calls: list[int]) -> torch.Tensor:
    return cache.get(inputs, lambda: calls.append(1) or inputs[0] * 2)


def test_reused_while_inputs_are_the_same_objects_and_unmodified():
    cache, calls = Precomputed(), []
    a = torch.ones(3)
    first = _counting(cache, [a], calls)
    assert _counting(cache, [a], calls) is first and len(calls) == 1
    a.add_(1)  # in place: version bump
    assert torch.equal(_counting(cache, [a], calls), torch.full((3,), 4.0)) and len(calls) == 2
    b = a.clone()  # equal values, another tensor
    _counting(cache, [b], calls)
    assert len(calls) == 3
    a.data = torch.zeros(3)  # what module.to() does: same object, new storage
    assert torch.equal(_counting(cache, [a], calls), torch.zeros(3)) and len(calls) == 4


def test_not_kept_under_autograd_or_when_switched_off(monkeypatch):
    cache, calls = Precomputed(), []
    w = torch.ones(2, requires_grad=True)
    _counting(cache, [w], calls), _counting(cache, [w], calls)
    assert len(calls) == 2  # autograd tracks w: computed each call
    monkeypatch.setattr(precomputed, "PRECOMPUTE", False)
    x = torch.ones(2)
    _counting(cache, [x], calls), _counting(cache, [x], calls)
    assert len(calls) == 4


def test_inference_tensors_are_compared_with_a_copy():
    cache, calls = Precomputed(), []
    with torch.inference_mode():  # no version counter: weights loaded under inference mode
        t = torch.ones(2)
        _counting(cache, [t], calls), _counting(cache, [t], calls)
        assert len(calls) == 1
        t.add_(1)
        assert torch.equal(_counting(cache, [t], calls), torch.full((2,), 4.0)) and len(calls) == 2


def test_decoder_reuses_the_first_query_projection_and_follows_a_load(monkeypatch):
    torch.manual_seed(0)
    decoder = RecognitionDecoder(DecoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                               encoder_width=16)).eval()
    queries, image = torch.randn(20, 32), torch.randn(2, 5, 16)
    with torch.no_grad():
        first = decoder(queries, image)
        assert torch.equal(decoder(queries, image), first)
        state = {k: v + 0.1 for k, v in decoder.state_dict().items()}
        decoder.load_state_dict(state)
        reloaded = decoder(queries, image)
        monkeypatch.setattr(precomputed, "PRECOMPUTE", False)
        expected = decoder(queries, image)
    assert torch.equal(reloaded, expected) and not torch.allclose(reloaded, first)
