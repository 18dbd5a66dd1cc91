"""timm's Swin block doing the same maths with fewer passes over memory (the taggers' exact CPU path).

timm's `SwinTransformerBlock` (the RAM / RAM++ / Tag2Text image encoder) moves every activation
through memory about eight times per block besides its matrix products: `torch.roll` (a concatenation)
and window partition on the way in, `window_reverse`, a `.contiguous()` slice and a second roll on the
way out, the q/k/v head split and the head merge, then separate passes for q * scale, the relative-
position bias, the shift mask, softmax, GELU and both residual adds. Profiled at the released size
(RAM++ Swin-L 384, one forward), those passes took about as long as all the Linear layers together.

`LeanSwinBlock` keeps timm's modules and parameters and computes the same function:
- the block's tokens are put into its (shifted) window order by one `index_select` with a precomputed
  permutation (cyclic shift and window partition in one copy), and back by one more;
- norm1, qkv, the output projection, norm2 and the MLP run in window order (they work token by
  token, so the order does not change what they compute); the residual adds travel with the tokens;
- attention is `F.scaled_dot_product_attention` on the q/k/v views of the qkv output (no head-split
  copy), with the relative-position bias (plus the shifted-window -100 mask) as its float mask; its
  output's memory layout is already (windows, tokens, heads, head_dim), so merging heads is free;
- the output projection and the second MLP Linear add the residual inside oneDNN's GEMM, and the first
  MLP Linear applies the exact (erf) GELU there (`recognize.onednn_linear.linear`).

Deliberate difference from timm / the official Swin (why: speed, same maths): the results are not bit
for bit timm's. The fused kernel computes (q k^T) * scale + (bias + mask) where timm computes
((q * scale) k^T + bias) + mask, its softmax is the streaming (online) form, and oneDNN sums in
another order than MKL: differences of float32 rounding (~1e-6 relative, accumulated over 24
blocks), checked against timm's own forward and against the official fixtures within their existing
tolerances (`tests/taggers/test_lean_swin.py`, `tests/taggers/test_parity_*.py`).

The bias gathered from its table is kept on the block (~47 MB for Swin-L at 384) while the table is
unchanged (`recognize.taggers.precomputed`).

Where it does not apply it runs timm's forward unchanged: windows that need padding (a map not a
multiple of the window; never at the released 224 / 384 sizes), training, autograd tracking the block
(inputs or parameters that need gradients), autocast (the opt-in fast
modes keep the path their fidelity was measured on), quantized (tensor-subclass) weights, a non-GELU
activation or an MLP norm. `LEAN = False` switches it off everywhere (benchmarks, FLOP counting: torch's
`FlopCounterMode` has no formula for oneDNN's linear or CPU flash attention); `use_timm_blocks` puts
timm's class back on a built model, `use_lean_blocks` installs this one (the tagger stages do so at
load, with `recognize.onednn_linear.use_onednn_linears`; a model built directly runs timm's forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock
from torch import nn

from recognize.onednn_linear import linear
from recognize.taggers.precomputed import cache_on

__all__ = ["LEAN", "LeanSwinBlock", "use_lean_blocks", "use_timm_blocks", "window_order"]

#: Run the lean forward where it applies (False: timm's `SwinTransformerBlock.forward` everywhere).
LEAN = True


def window_order(height: int, width: int, window: tuple[int, int], shift: tuple[int, int],
                 device: torch.device | None = None) -> torch.Tensor:
    """Token indices (row-major, [H*W]) in the order timm's attention sees them: rolled by -shift,
    then window after window (row-major windows, row-major tokens inside a window)."""
    wh, ww = window
    rows = (torch.arange(height, device=device) + shift[0]) % height
    cols = (torch.arange(width, device=device) + shift[1]) % width
    grid = rows[:, None] * width + cols[None, :]  # grid[r, c]: source token of rolled position (r, c)
    return grid.view(height // wh, wh, width // ww, ww).permute(0, 2, 1, 3).reshape(-1)


class LeanSwinBlock(SwinTransformerBlock):
    """timm's `SwinTransformerBlock` with one copy into and out of window order and fused attention."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 0:  # an empty batch: an empty output (timm's and our `view(..., -1)` raise on it)
            return x.new_empty(x.shape)
        if not self._lean_applies(x):
            return super().forward(x)
        B, H, W, C = x.shape
        order, inverse = self._orders(H, W, x.device)
        tokens = x.reshape(B, H * W, C)
        if order is not None:
            tokens = tokens.index_select(1, order)
        attn, mlp = self.attn, self.mlp
        qkv = linear(attn.qkv, self.norm1(tokens))
        tokens = linear(attn.proj, self._attention(qkv), residual=tokens)
        hidden = linear(mlp.fc1, self.norm2(tokens), gelu=True)
        tokens = linear(mlp.fc2, hidden, residual=tokens)
        if inverse is not None:
            tokens = tokens.index_select(1, inverse)
        return tokens.view(B, H, W, C)

    def _attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T * scale + bias + mask) v per window and head: qkv [B, L, 3C] -> [B, L, C]."""
        B, L, C3 = qkv.shape
        attn = self.attn
        area, heads = self.window_area, attn.num_heads
        windows = L // area
        q, k, v = qkv.view(B * windows, area, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self._bias(q.dtype)  # [1, heads, N, N]
        if self.attn_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
        else:
            mask = bias + self.attn_mask.unsqueeze(1).to(q.dtype)  # [windows, heads, N, N]
            parts = [F.scaled_dot_product_attention(q[i : i + windows], k[i : i + windows], v[i : i + windows],
                                                    attn_mask=mask, scale=attn.scale)
                     for i in range(0, B * windows, windows)]
            out = parts[0] if B == 1 else torch.cat([p.transpose(1, 2) for p in parts]).transpose(1, 2)
        return out.transpose(1, 2).reshape(B, L, C3 // 3)  # SDPA's output is laid out (windows, N, heads, d)

    def _bias(self, dtype: torch.dtype) -> torch.Tensor:
        """The relative-position bias [1, heads, N, N] in `dtype`, gathered from its table once and kept on
        the block (one per dtype) while the table is unchanged (`recognize.taggers.precomputed`)."""
        attn = self.attn
        inputs = [attn.relative_position_bias_table, attn.relative_position_index]
        return cache_on(self, "bias").get(inputs, lambda: attn._get_rel_pos_bias().to(dtype), key=dtype)

    def _orders(self, H: int, W: int, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(window order, its inverse) for this map size, cached on the block; None for the identity."""
        key = (H, W, device)
        cache = self.__dict__.setdefault("_lean_orders", {})
        if key not in cache:
            order = window_order(H, W, self.window_size, self.shift_size, device)
            if torch.equal(order, torch.arange(H * W, device=device)):
                cache[key] = (None, None)
            else:
                cache[key] = (order, torch.argsort(order))
        return cache[key]

    def _lean_applies(self, x: torch.Tensor) -> bool:
        mlp, act = self.mlp, getattr(self.mlp, "act", None)
        weights = (self.attn.qkv.weight, self.attn.proj.weight, mlp.fc1.weight, mlp.fc2.weight)
        tracked = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        return (LEAN and not self.training and not tracked and not torch.is_autocast_enabled(x.device.type)
                and x.shape[1] % self.window_size[0] == 0 and x.shape[2] % self.window_size[1] == 0
                and type(act) is nn.GELU and act.approximate == "none"
                and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity)
                and all(type(w) in (torch.Tensor, nn.Parameter) for w in weights)
                and not getattr(self, "dynamic_mask", False))


def use_lean_blocks(module: nn.Module) -> nn.Module:
    """Give every timm `SwinTransformerBlock` inside `module` the lean forward (parameters and keys stay)."""
    return _swap_classes(module, SwinTransformerBlock, LeanSwinBlock)


def use_timm_blocks(module: nn.Module) -> nn.Module:
    """timm's own block forward everywhere in `module` again (for comparisons); returns it."""
    return _swap_classes(module, LeanSwinBlock, SwinTransformerBlock)


def _swap_classes(module: nn.Module, old: type, new: type) -> nn.Module:
    for child in module.modules():
        if type(child) is old:
            child.__class__ = new
    return module
