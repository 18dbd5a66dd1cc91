"""SAM's image-encoder attention with the same arithmetic and a third of the memory.

segment-anything's `Attention.forward` adds the decomposed relative-position bias out of place:
`attn.view(...) + rel_h[...] + rel_w[...]` makes two more tensors the size of the attention matrix,
and `softmax` a fourth. In vit_h's four global-attention blocks that matrix is 16 heads x 4096 x
4096 fp32 = 1 GiB per image, so one block held ~3 GiB at once, the largest allocation of the whole
tag -> box -> mask chain. `LeanAttention` does the same operations in the same order, in place:
the two bias adds (`add_`) and the softmax (written over its input), so each element goes through
the very same float operations and the output is bit for bit segment-anything's
(`tests/test_attention.py` checks it with `torch.equal`); one attention matrix is alive at a time,
and two passes over 1 GiB of memory are saved. On CPU it also takes the heads a few at a time
(`chunk_bytes`): each head's products are independent, so a quarter of the heads hold a quarter of
the memory. The windowed blocks (14 x 14 tokens) gain little. Those smaller batched products are the
same float operations, but a BLAS may split one product's sums between threads where a larger batch
gave each thread whole heads (MKL on an Intel Xeon with 2 threads, 2026-12-05: `attn @ v` for a single
head), so taken a few at a time the last bits can differ (measured 1.4e-6 on one such product; bit for
bit on one thread, where the tests check it; vit_h takes 4 of its 16 heads per step).
Under autocast (the opt-in `dtype` fast modes) the softmax stays out of place, as segment-anything's:
autocast computes it in float32, which an `out=` call would bypass.

Installed by `use_lean_attention` on a built model: the modules keep their parameters and state
dict; only `forward` differs. Never a patch of segment-anything itself.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

__all__ = ["LeanAttention", "use_lean_attention"]


class LeanAttention(Attention):
    """segment-anything's `Attention`, with the relative-position adds and softmax done in place, and
    on CPU the heads taken a few at a time when the attention matrices would exceed `chunk_bytes`."""

    #: On CPU, at most this many bytes of attention matrices at once (vit_h's global blocks: 4 of their
    #: 16 heads per step instead of 1 GiB); None: all heads at once. Why CPU only: there each head's
    #: matrix products were checked to give the same bits whether computed alone or batched on one
    #: thread, and within 1e-5 on several (`tests/test_attention.py`, which runs with small chunks; the
    #: module doc says why threads matter), which no library promises for GPUs.
    chunk_bytes: ClassVar[int | None] = 256 * 2**20

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        # qkv with shape (3, B, nHead, H * W, C), exactly as segment-anything computes it
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)

        rows, step = q.shape[0], self._rows_per_step(q)
        if step >= rows:
            out = self._attend(q, k, v, (H, W))
        else:
            parts = [self._attend(q[i : i + step], k[i : i + step], v[i : i + step], (H, W))
                     for i in range(0, rows, step)]
            out = torch.cat(parts)
            del parts
        x = out.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)

    def _rows_per_step(self, q: torch.Tensor) -> int:
        if self.chunk_bytes is None or q.device.type != "cpu":
            return q.shape[0]
        per_row = q.shape[1] * q.shape[1] * q.element_size()
        return max(1, self.chunk_bytes // per_row)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """softmax(q k^T * scale + relative positions) v for (batch x head) rows, in place where exact."""
        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            add_decomposed_rel_pos_(attn, q, self.rel_pos_h, self.rel_pos_w, size, size)
        if torch.is_autocast_enabled(attn.device.type):  # fast modes: autocast runs softmax in float32
            attn = attn.softmax(dim=-1)
        else:
            torch.softmax(attn, dim=-1, out=attn)
        return attn @ v


def add_decomposed_rel_pos_(
    attn: torch.Tensor,
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int],
    k_size: tuple[int, int],
) -> torch.Tensor:
    """segment-anything's `add_decomposed_rel_pos`, adding into `attn` (same order: + rel_h, then + rel_w)."""
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w)
    B, _, dim = q.shape
    r_q = q.reshape(B, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    view = attn.view(B, q_h, q_w, k_h, k_w)
    view.add_(rel_h[:, :, :, :, None])
    view.add_(rel_w[:, :, :, None, :])
    return attn


def use_lean_attention(module: nn.Module) -> nn.Module:
    """Give every segment-anything `Attention` inside `module` the in-place forward; returns `module`."""
    for child in module.modules():
        if type(child) is Attention:
            child.__class__ = LeanAttention
    return module
