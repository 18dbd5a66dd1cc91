"""`lean_layers`: the leaner forwards give transformers' own outputs for the same weights."""

from __future__ import annotations

import pytest
import torch
from gd_support import randomize_
from recognize_grounding_dino.lean_layers import DeformableSampling, lean
from recognize_grounding_dino.model import build_config, build_model


@pytest.fixture(scope="module")
def pair(tiny):
    """Our model (lean) and a plain transformers model with the same weights."""
    from transformers import GroundingDinoForObjectDetection

    ours = randomize_(build_model(build_config("swint_ogc", tiny)), seed=0)
    plain = GroundingDinoForObjectDetection(build_config("swint_ogc", tiny)).eval()
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def _run(model, pixels, ids, pixel_mask=None, attention_mask=None):
    with torch.inference_mode():
        return model(pixel_values=pixels, input_ids=ids, pixel_mask=pixel_mask,
                     attention_mask=torch.ones_like(ids) if attention_mask is None else attention_mask)


def test_the_leaner_forwards_are_in_place(pair):
    ours, plain = pair
    kinds = {type(m).__name__ for m in ours.modules()}
    assert {"LeanSwinAttention", "LeanGroundingDinoBiMultiHeadAttention", "DeformableSampling"} <= kinds
    assert not any(isinstance(m, DeformableSampling) for m in plain.modules())
    assert list(ours.state_dict()) == list(plain.state_dict())  # checkpoints load as before


@pytest.mark.parametrize("padded", [False, True])
def test_outputs_equal_transformers(pair, tokenizer, padded):
    """Bit for bit here (each fused q/k/v GEMM may round the last bit differently on other CPUs, so
    the comparison allows float32 rounding); with padded pixels and tokens the masks are used."""
    ours, plain = pair
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 128, 200)
    captions = ["person . dog . traffic light .", "red car ."]
    tokens = tokenizer(captions, padding="longest", return_tensors="pt")
    pixel_mask = attention_mask = None
    if padded:
        pixel_mask = torch.ones(2, 128, 200, dtype=torch.long)
        pixel_mask[1, :, 150:] = 0
        attention_mask = tokens["attention_mask"]
        assert not attention_mask.all()
    else:
        tokens["input_ids"] = tokens["input_ids"][:1].expand(2, -1)
    a = _run(ours, pixels, tokens["input_ids"], pixel_mask, attention_mask)
    b = _run(plain, pixels, tokens["input_ids"], pixel_mask, attention_mask)
    finite = torch.isfinite(b.logits)
    assert torch.equal(finite, torch.isfinite(a.logits))
    torch.testing.assert_close(a.logits[finite], b.logits[finite], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pred_boxes, b.pred_boxes, atol=1e-6, rtol=0)


def test_a_changed_weight_is_used(pair, tokenizer):
    """The fused q/k/v weight is cached: changing one projection in place must reach the output."""
    ours, _plain = pair
    ids = tokenizer(["dog ."], return_tensors="pt")["input_ids"]
    pixels = torch.randn(1, 3, 96, 96)
    before = _run(ours, pixels, ids).pred_boxes
    swin_q = next(p for n, p in ours.named_parameters() if n.endswith("blocks.0.attention.q_proj.weight"))
    original = swin_q.detach().clone()
    try:
        with torch.no_grad():
            swin_q.mul_(3.0)
        assert not torch.equal(_run(ours, pixels, ids).pred_boxes, before)
    finally:
        with torch.no_grad():
            swin_q.copy_(original)
    torch.testing.assert_close(_run(ours, pixels, ids).pred_boxes, before, atol=0, rtol=0)


def test_lean_is_idempotent(pair):
    ours, _ = pair
    kinds = [type(m) for m in ours.modules()]
    lean(ours)
    assert [type(m) for m in ours.modules()] == kinds
