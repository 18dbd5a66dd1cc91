"""`LeanBlock` (no work on window padding, fused attention, oneDNN linears) against segment-anything's
`Block`: not bit for bit (another summation order), so within a tight tolerance, and the same masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recognize import onednn_linear
from recognize_sam.attention import LeanAttention
from recognize_sam import lean_block
from recognize_sam.lean_block import LeanBlock, use_lean_blocks, use_segment_anything
from recognize_sam.model import SamConfig, build_sam
from sam_support import TINY_CONFIG, random_boxes
from segment_anything import SamPredictor
from segment_anything.modeling.image_encoder import Attention, Block

#: max |lean - segment-anything| over max |segment-anything|: float32 rounding of another order
#: (measured ~2e-7 per block, ~2e-6 for the tiny model; vit_h's 32 random blocks reach 2.1e-5:
#: benchmarks/README.md)
RELATIVE = 1e-5


def _close(got: torch.Tensor, expected: torch.Tensor, relative: float = RELATIVE) -> None:
    error = (got - expected).abs().max().item()
    assert error <= relative * expected.abs().max().item(), error


def _block(dim: int, heads: int, size: int, window: int, seed: int) -> Block:
    torch.manual_seed(seed)
    block = Block(dim, heads, use_rel_pos=True, window_size=window, input_size=(size, size)).eval()
    with torch.no_grad():  # segment-anything zero-initialises the tables: give them values that matter
        block.attn.rel_pos_h.normal_()
        block.attn.rel_pos_w.normal_()
        block.attn.qkv.bias.normal_()  # padding tokens' q/k/v are this bias: make it matter
    return block


def _both(block: Block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        expected = use_segment_anything(block)(x)
        got = use_lean_blocks(block)(x)
    assert type(block) is LeanBlock and type(block.attn) is LeanAttention
    return got, expected


# (dim, heads, tokens per side, window, batch): windows with padding on both axes (20 -> 28), windows
# without padding, a non-square grid, global attention; oneDNN linears on and off
@pytest.mark.parametrize("dim, heads, size, window, batch",
                         [(64, 4, 20, 14, 2), (48, 3, 28, 14, 1), (32, 2, 9, 4, 1), (64, 4, 16, 0, 2)])
@pytest.mark.parametrize("onednn", [True, False])
def test_lean_block_matches_segment_anything(dim, heads, size, window, batch, onednn, monkeypatch):
    monkeypatch.setattr(onednn_linear, "ONEDNN", onednn)
    calls = []
    original = lean_block._onednn_relpos_attention
    monkeypatch.setattr(lean_block, "_onednn_relpos_attention", lambda *a: calls.append(1) or original(*a))
    block = _block(dim, heads, size, window, seed=size)
    x = torch.randn(batch, size, size, dim)
    got, expected = _both(block, x)
    _close(got, expected)
    assert not torch.equal(x, got)  # the input is not written over by the in-place adds
    assert calls == []  # windows and small grids (< ONEDNN_ATTENTION_MIN_TOKENS) keep SDPA


def test_non_square_grid():
    block = _block(32, 2, 20, 6, seed=1)
    got, expected = _both(block, torch.randn(1, 20, 13, 32))
    _close(got, expected)


def test_padding_keys_take_part_as_the_bias():
    """Were padding keys/values dropped (or zeros), the rows next to the padding would differ a lot."""
    block = _block(32, 2, 10, 7, seed=2)
    got, expected = _both(block, torch.randn(1, 10, 10, 32))
    _close(got, expected)
    with torch.no_grad():
        block.attn.qkv.bias.add_(1.0)
        shifted, _ = _both(block, torch.randn(1, 10, 10, 32))
    assert not torch.allclose(shifted, got)


def test_head_chunks_give_the_same_bits(monkeypatch):
    """Global attention taken a few heads at a time (CPU memory bound) computes each head alone."""
    block = use_lean_blocks(_block(32, 4, 16, 0, seed=3))
    x = torch.randn(1, 16, 16, 32)
    with torch.inference_mode():
        monkeypatch.setattr(LeanAttention, "chunk_bytes", None)
        whole = block(x)
        monkeypatch.setattr(LeanAttention, "chunk_bytes", (16 * 16) ** 2 * 4)  # one head per step
        chunked = block(x)
    _close(chunked, whole, relative=1e-6)


# global attention as oneDNN GEMMs (`_onednn_relpos_attention`), forced on for small grids, with score
# blocks that do not divide the tokens (a partial last block), a non-square grid and a batch of two
@pytest.mark.parametrize("shape, rows", [((2, 16, 16), 100), ((1, 20, 13), 64), ((1, 12, 12), 1024)])
def test_global_attention_as_onednn_gemms_matches_segment_anything(shape, rows, monkeypatch):
    if not onednn_linear.available():
        pytest.skip("this torch build has no oneDNN linear")
    monkeypatch.setattr(onednn_linear, "ONEDNN", True)  # the default on AVX-512 CPUs; tested on any
    monkeypatch.setattr(lean_block, "ONEDNN_ATTENTION_MIN_TOKENS", 0)
    monkeypatch.setattr(lean_block, "ONEDNN_ATTENTION_ROWS", rows)
    calls = []
    original = lean_block._onednn_relpos_attention
    monkeypatch.setattr(lean_block, "_onednn_relpos_attention", lambda *a: calls.append(1) or original(*a))
    batch, h, w = shape
    block = _block(64, 4, max(h, w), 0, seed=h * w)
    block.attn.rel_pos_h.data = block.attn.rel_pos_h.data[: 2 * h - 1]
    block.attn.rel_pos_w.data = block.attn.rel_pos_w.data[: 2 * w - 1]
    got, expected = _both(block, torch.randn(batch, h, w, 64))
    assert calls, "the oneDNN attention did not run"
    _close(got, expected)


def test_vit_h_sized_global_attention_takes_the_onednn_path(monkeypatch):
    """4,096 tokens (64 x 64, SAM's global blocks) with the defaults: oneDNN GEMMs, same result."""
    if not onednn_linear.available():
        pytest.skip("this torch build has no oneDNN linear")
    monkeypatch.setattr(onednn_linear, "ONEDNN", True)  # the default on AVX-512 CPUs; tested on any
    calls = []
    original = lean_block._onednn_relpos_attention
    monkeypatch.setattr(lean_block, "_onednn_relpos_attention", lambda *a: calls.append(1) or original(*a))
    block = _block(32, 2, 64, 0, seed=64)
    got, expected = _both(block, torch.randn(1, 64, 64, 32))
    assert calls
    _close(got, expected)


def test_autocast_runs_segment_anythings_block_exactly():
    """The opt-in bf16 fast mode keeps the arithmetic it was measured with: segment-anything's."""
    block = _block(32, 2, 20, 14, seed=4)
    x = torch.randn(1, 20, 20, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = use_segment_anything(block)(x)
        got = use_lean_blocks(block)(x)
    assert torch.equal(got, expected)


@pytest.fixture(scope="module")
def tiny_pair():
    """The tiny SAM twice, same weights, non-zero relative positions: lean and segment-anything's."""
    lean = build_sam(config=SamConfig(**TINY_CONFIG), seed=0)
    with torch.no_grad():
        for m in lean.image_encoder.modules():
            if isinstance(m, Attention):
                m.rel_pos_h.normal_()
                m.rel_pos_w.normal_()
    plain = build_sam(config=SamConfig(**TINY_CONFIG), seed=0)
    plain.load_state_dict(lean.state_dict())
    return lean, use_segment_anything(plain)


def test_built_model_has_lean_blocks_and_its_embedding_matches_segment_anything(tiny_pair):
    lean, plain = tiny_pair
    assert all(type(b) is LeanBlock for b in lean.image_encoder.blocks)
    assert all(type(b) is Block and type(b.attn) is Attention for b in plain.image_encoder.blocks)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        _close(lean.image_encoder(x), plain.image_encoder(x))


@pytest.mark.slow
def test_sampredictor_masks_are_segment_anythings(tiny_pair, small_photo):
    """Mask logits agree to ~1e-7, so masks are the same except where segment-anything's own logit is
    within rounding of the threshold 0 (seen: 1 pixel of 3.3 million, logit 5e-8)."""
    from recognize.images import load_image

    image = load_image(small_photo)
    lean, plain = (SamPredictor(m) for m in tiny_pair)
    lean.set_image(image)
    plain.set_image(image)
    _close(lean.features, plain.features)
    flipped = 0
    for box in random_boxes(*image.shape[:2], 4, seed=0):
        got_logits, got_scores, _ = lean.predict(box=box, multimask_output=True, return_logits=True)
        logits, scores, _ = plain.predict(box=box, multimask_output=True, return_logits=True)
        np.testing.assert_allclose(got_logits, logits, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got_scores, scores, rtol=0, atol=1e-5)
        differ = (got_logits > 0) != (logits > 0)
        assert np.all(np.abs(logits[differ]) < 1e-5)
        flipped += int(differ.sum())
        assert (logits > 0).any() and not (logits > 0).all()
    assert flipped <= 10
