"""`LeanAttention` (in-place relative-position adds and softmax) gives segment-anything's bits exactly
(with its heads taken a few at a time: exactly on one thread, within 1e-5 on several)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from recognize_sam.attention import LeanAttention, use_lean_attention
from recognize_sam.model import SamConfig, build_sam
from sam_support import TINY_CONFIG
from segment_anything.modeling.image_encoder import Attention, Block


def _pair(dim: int, heads: int, size: int, seed: int) -> tuple[Attention, Attention]:
    torch.manual_seed(seed)
    original = Attention(dim, num_heads=heads, use_rel_pos=True, input_size=(size, size))
    with torch.no_grad():  # segment-anything zero-initialises the tables: give them values that matter
        original.rel_pos_h.normal_()
        original.rel_pos_w.normal_()
    lean = Attention(dim, num_heads=heads, use_rel_pos=True, input_size=(size, size))
    lean.load_state_dict(original.state_dict())
    return original, use_lean_attention(lean)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch on one thread inside the block: a BLAS cannot then split one product's sums between threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# (dim, heads, tokens per side, batch): a windowed block's 14 x 14, a global block's 64 x 64 (vit_b
# heads, narrower), a non-square batch of 2; chunk_bytes: all heads at once, or 1, 2 or 4 (batch x head)
# rows per step
@pytest.mark.parametrize("dim, heads, size, batch", [(64, 4, 14, 3), (96, 2, 64, 1), (48, 3, 20, 2)])
@pytest.mark.parametrize("rows_per_step", [None, 1, 2, 4])  # 4: 12 rows in 3 steps, 6 rows in 4 + 2
def test_lean_attention_equals_segment_anything_bit_for_bit(dim, heads, size, batch, rows_per_step, monkeypatch):
    per_row = (size * size) ** 2 * 4
    monkeypatch.setattr(LeanAttention, "chunk_bytes", None if rows_per_step is None else rows_per_step * per_row)
    original, lean = _pair(dim, heads, size, seed=size)
    assert type(lean) is LeanAttention
    x = torch.randn(batch, size, size, dim)
    with torch.inference_mode():
        expected, got = original(x), lean(x)
    if rows_per_step is None or rows_per_step >= batch * heads:  # the very same library calls
        assert torch.equal(expected, got)
        return
    # Heads taken a few at a time are the same float operations in smaller batched products, but a
    # BLAS may split a product's sums across threads differently for another batch size (MKL on an
    # Intel Xeon, 2 threads: `attn @ v` for one head split K = 4096 between the threads, for two heads
    # gave each thread one head): other last bits. So bit for bit on one thread, close on all of them.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with _one_thread(), torch.inference_mode():
        assert torch.equal(original(x), lean(x))


def test_lean_attention_without_relative_positions():
    torch.manual_seed(1)
    original = Attention(32, num_heads=2, use_rel_pos=False)
    lean = use_lean_attention(Attention(32, num_heads=2, use_rel_pos=False))
    lean.load_state_dict(original.state_dict())
    x = torch.randn(2, 8, 8, 32)
    with torch.inference_mode():
        assert torch.equal(original(x), lean(x))


@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_lean_attention_under_autocast_matches_segment_anything(chunk_bytes, monkeypatch):
    """The fast modes' autocast: softmax stays out of place (float32), so the same bits here too."""
    monkeypatch.setattr(LeanAttention, "chunk_bytes", chunk_bytes)
    original, lean = _pair(32, 2, 14, seed=3)
    x = torch.randn(1, 14, 14, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(original(x), lean(x))


def test_lean_attention_takes_heads_a_few_at_a_time_on_cpu(monkeypatch):
    lean = use_lean_attention(Attention(64, num_heads=8, use_rel_pos=True, input_size=(64, 64)))
    q = torch.zeros(8, 64 * 64, 8)
    monkeypatch.setattr(LeanAttention, "chunk_bytes", 256 * 2**20)
    assert lean._rows_per_step(q) == 4  # 64 MiB per head: 4 heads per step (vit_h's global blocks alike)
    monkeypatch.setattr(LeanAttention, "chunk_bytes", None)
    assert lean._rows_per_step(q) == 8


@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_built_encoder_uses_lean_attention_and_equals_the_original_encoder(chunk_bytes, monkeypatch):
    monkeypatch.setattr(LeanAttention, "chunk_bytes", chunk_bytes)
    sam = build_sam(config=SamConfig(**TINY_CONFIG), seed=0)
    for m in sam.image_encoder.modules():  # segment-anything's Block around the attention (not LeanBlock)
        if isinstance(m, Block):
            m.__class__ = Block
    attentions = [m for m in sam.image_encoder.modules() if isinstance(m, Attention)]
    assert attentions and all(type(m) is LeanAttention for m in attentions)
    with torch.no_grad():
        for m in attentions:  # non-zero relative-position tables (zeros at init)
            m.rel_pos_h.normal_()
            m.rel_pos_w.normal_()
    x = torch.randn(1, 3, 1024, 1024)
    # one head at a time: bit for bit on one thread only (the test above says why)
    with _one_thread() if chunk_bytes is not None else contextlib.nullcontext(), torch.inference_mode():
        lean = sam.image_encoder(x)
        for m in attentions:
            m.__class__ = Attention
        original = sam.image_encoder(x)
    assert torch.equal(lean, original)
