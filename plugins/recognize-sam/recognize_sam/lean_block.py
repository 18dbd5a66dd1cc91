"""SAM's image-encoder block doing less: no work on padding tokens, one fused attention kernel.

segment-anything's `Block` pads the 64 x 64 token grid to 70 x 70 (25 windows of 14 x 14) *before*
the attention's qkv linear in its 28 windowed blocks (vit_h), so 16% of the qkv, attention and
projection rows are padding. After `norm1` a padding token is exactly zero, so its q/k/v are exactly
the qkv bias. `LeanBlock` runs qkv on the 4,096 real tokens only, writes the bias into the padding
positions of the windows (padding keys and values still take part in attention, as in SAM), and
runs the output projection on the real tokens only. Attention rows of padding queries are still
computed (they are ~0.5% of a block's FLOPs and dropping them would split the windows into four
shapes).

Attention in the windowed blocks is `torch.nn.functional.scaled_dot_product_attention` with the
decomposed relative-position bias (rel_h + rel_w) as its float mask: one call for all 400 window-heads.
In the global blocks (4,096 tokens), where CPU fp32 goes through oneDNN (`onednn_linear.ONEDNN`: AVX-512
CPUs by default), it is two oneDNN GEMMs per head and block of 256 query rows
(`_onednn_relpos_attention`): (q * scale) k^T into a 4 MiB score block, + rel_h, + rel_w and the
softmax in place while the block is in cache, then P v. CPU SDPA's flash kernel runs its products
through torch's CPU BLAS (MKL's sgemm, at about half of oneDNN's rate on the AMD EPYC measured) and
needs the bias as a (4 heads, 4,096, 4,096) mask per chunk of heads (`LeanAttention.chunk_bytes`): one
global block's attention took 0.74-0.78 s that way against 0.47 s as oneDNN GEMMs (86 GFLOP; 16 heads x
4,096 x 80; `benchmarks/README.md`). Neither writes the 1 GiB score matrix segment-anything writes,
re-reads and re-writes four times. Measured on that AMD CPU only: where MKL's sgemm runs at full speed
(Intel), the flash kernel may win; `ONEDNN_ATTENTION_MIN_TOKENS` is the switch.

Deliberate difference from segment-anything: the output is no longer bit for bit the same. The
fused kernel adds the bias as (q k^T * scale) + (rel_h + rel_w) where SAM computes
((q * scale) k^T + rel_h) + rel_w (the global blocks' oneDNN path keeps SAM's order), and oneDNN's
or row-subset matrix products may round differently in the last bit. Measured: the tiny test model's
embedding within ~2e-6 of its largest value and mask logits within 1e-7, so masks equal except where a
logit is within rounding of 0 (`tests/test_lean_block.py` bounds both); vit_h with the benchmark's random
weights (32 blocks of accumulation), with the oneDNN global attention: at most 1.2e-5 absolute, 2.5e-6
of the embedding's largest value (1.0e-4 and 2.1e-5 with flash SDPA there, on another random checkpoint;
`benchmarks/README.md`). Under autocast or with quantized (tensor-subclass) Linear weights (the opt-in
fast modes) the block runs segment-anything's own forward with `LeanAttention`, so fast modes keep the
fidelity they were measured with.

`use_lean_blocks` installs it on a built model (modules keep their parameters and state dict; only
`forward` differs); `use_segment_anything` puts segment-anything's own classes back (benchmarks, tests),
including plain `nn.Linear` for the decoder's oneDNN linears.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, Block, get_rel_pos
from torch import nn

from recognize import onednn_linear
from recognize.onednn_linear import OneDNNLinear, linear, linear_weights
from recognize_sam.attention import LeanAttention

__all__ = ["LEAN", "LeanBlock", "use_lean_blocks", "use_segment_anything"]

#: Run the lean forward where it applies; a switch for benchmarks (False: segment-anything's `Block.forward`,
#: e.g. to count FLOPs "as segment-anything computes them": `FlopCounterMode` has no formula for oneDNN's
#: linear or CPU flash attention, and the lean forward skips the window padding's work).
LEAN = True
#: attention over at least this many tokens (SAM's global blocks: 4,096) runs as oneDNN GEMMs on CPU;
#: fewer (the 14 x 14 windows) as one SDPA call, whose per-call cost is lower than 800 small GEMMs'
ONEDNN_ATTENTION_MIN_TOKENS = 1024
#: query rows per oneDNN score block: 256 x 4,096 floats (4 MiB) stay in cache for the bias and the
#: softmax (measured 0.468 s per global block with 256 rows, 0.475 with 512, 0.534 with 4,096)
ONEDNN_ATTENTION_ROWS = 256


class LeanBlock(Block):
    """segment-anything's `Block` without work on window padding and with fused attention."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._exact_path_applies(x):
            return super().forward(x)
        B, H, W, C = x.shape
        attn = self.attn
        qkv = linear(attn.qkv, self.norm1(x))  # (B, H, W, 3C): real tokens only
        if self.window_size > 0:
            out = self._windowed_attention(qkv)
        else:
            q, k, v = _heads(qkv.view(B, 1, H, 1, W, 3 * C), attn.num_heads)
            out = _sdpa_relpos(attn, q, k, v, (H, W)).view(B, attn.num_heads, H, W, -1)
            out = out.permute(0, 2, 3, 1, 4).reshape(B, H, W, C)
        x = linear(attn.proj, out, residual=x)  # shortcut + attention
        mlp = self.mlp
        if type(mlp.act) is nn.GELU and mlp.act.approximate == "none":
            hidden = linear(mlp.lin1, self.norm2(x), gelu=True)
        else:
            hidden = mlp.act(linear(mlp.lin1, self.norm2(x)))
        return linear(mlp.lin2, hidden, residual=x)

    def _exact_path_applies(self, x: torch.Tensor) -> bool:
        weight = self.attn.qkv.weight
        return (LEAN and self.attn.use_rel_pos and not torch.is_autocast_enabled(x.device.type)
                and type(weight) in (torch.Tensor, nn.Parameter) and self.attn.qkv.bias is not None)

    def _windowed_attention(self, qkv: torch.Tensor) -> torch.Tensor:
        """Windows of `qkv` (B, H, W, 3C) padded with the qkv bias; attention; back to (B, H, W, C).

        Tokens go straight into the windows' q/k/v layout and back (one copy each way), with only the
        padding positions written with the bias."""
        B, H, W, C3 = qkv.shape
        ws, heads = self.window_size, self.attn.num_heads
        nh, nw = -(-H // ws), -(-W // ws)
        windows = qkv.new_empty(3, B, nh, nw, heads, ws, ws, C3 // 3 // heads)
        grid = windows.permute(1, 2, 5, 3, 6, 0, 4, 7)  # (B, nh, ws, nw, ws, 3, heads, head_dim)
        _copy_tokens(qkv.view(B, H, W, 3, heads, -1), grid, to_windows=True)
        # a padding token's q/k/v: the linear of a zero vector, i.e. the bias exactly
        bias = self.attn.qkv.bias.to(qkv.dtype).view(3, heads, -1)
        if H % ws:
            grid[:, nh - 1, H % ws :] = bias
        if W % ws:
            grid[:, :, :, nw - 1, W % ws :] = bias
        q, k, v = windows.view(3, B * nh * nw * heads, ws * ws, -1).unbind(0)
        out = _sdpa_relpos(self.attn, q, k, v, (ws, ws))  # (B * windows * heads, ws * ws, head_dim)
        tokens = out.new_empty(B, H, W, heads, out.shape[-1])
        _copy_tokens(tokens, out.view(B, nh, nw, heads, ws, ws, -1).permute(0, 1, 4, 2, 5, 3, 6), to_windows=False)
        return tokens.view(B, H, W, -1)


def _window_parts(n: int, ws: int) -> list[tuple[slice, slice, int, int]]:
    """Pieces covering tokens 0..n of one axis: (tokens, windows, windows in the piece, tokens per
    window in it): the full windows, then the partial last one."""
    full, rest = divmod(n, ws)
    parts = [(slice(0, full * ws), slice(0, full), full, ws)] if full else []
    if rest:
        parts.append((slice(full * ws, n), slice(full, full + 1), 1, rest))
    return parts


def _copy_tokens(tokens: torch.Tensor, grid: torch.Tensor, to_windows: bool) -> None:
    """Copy between a (B, H, W, ...) token grid and a (B, nh, ws, nw, ws, ...) window grid view."""
    _, H, W = tokens.shape[:3]
    ws = grid.shape[2]
    for rows, row_windows, n_rows, row_len in _window_parts(H, ws):
        for cols, col_windows, n_cols, col_len in _window_parts(W, ws):
            piece = tokens[:, rows, cols].unflatten(1, (n_rows, row_len)).unflatten(3, (n_cols, col_len))
            window = grid[:, row_windows, :row_len, col_windows, :col_len]
            (window if to_windows else piece).copy_(piece if to_windows else window)


def _heads(grid: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B * windows * heads, tokens per window, head_dim) from a (B, nh, ws, nw, ws, 3C) grid."""
    B, nh, ws_h, nw, ws_w, _ = grid.shape
    qkv = grid.view(B, nh, ws_h, nw, ws_w, 3, heads, -1).permute(5, 0, 1, 3, 6, 2, 4, 7)
    return qkv.reshape(3, B * nh * nw * heads, ws_h * ws_w, -1).unbind(0)


def _sdpa_relpos(attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    """softmax(q k^T * scale + rel_h + rel_w) v: as oneDNN GEMMs for global attention on CPU (see module
    doc), else SDPA, a few heads at a time on CPU (`LeanAttention.chunk_bytes`)."""
    h, w = size
    Rh = get_rel_pos(h, h, attn.rel_pos_h)
    Rw = get_rel_pos(w, w, attn.rel_pos_w)
    # q, k and v are views of one qkv product: the same dtype, device and autograd state
    if h * w >= ONEDNN_ATTENTION_MIN_TOKENS and onednn_linear.applies_to(k, q):
        return _onednn_relpos_attention(q, k, v, Rh, Rw, size, attn.scale)
    rows, step = q.shape[0], _rows_per_step(q)
    if step >= rows:  # one step (the windowed blocks): SDPA's own output, no copy into `out`
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_relpos_bias(q, Rh, Rw, size, None), scale=attn.scale)
    out = torch.empty_like(q if v.shape[-1] == q.shape[-1] else v)
    bias = None
    for i in range(0, rows, step):
        qi = q[i : i + step]
        bias = _relpos_bias(qi, Rh, Rw, size, bias)
        out[i : i + step] = F.scaled_dot_product_attention(qi, k[i : i + step], v[i : i + step], attn_mask=bias,
                                                           scale=attn.scale)
    return out


def _relpos_bias(q: torch.Tensor, Rh: torch.Tensor, Rw: torch.Tensor, size: tuple[int, int],
                 reuse: torch.Tensor | None) -> torch.Tensor:
    """rel_h + rel_w as an (n, h * w, h * w) attention mask for q (n, h * w, head_dim); written into
    `reuse` when it has the right size (the head chunks of a global block share one buffer)."""
    h, w = size
    n = q.shape[0]
    r_q = q.reshape(n, h, w, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    bias = reuse if reuse is not None and reuse.shape[0] == n else q.new_empty(n, h * w, h * w)
    torch.add(rel_h[:, :, :, :, None], rel_w[:, :, :, None, :], out=bias.view(n, h, w, h, w))
    return bias


def _onednn_relpos_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, Rh: torch.Tensor,
                             Rw: torch.Tensor, size: tuple[int, int], scale: float) -> torch.Tensor:
    """softmax((q * scale) k^T + rel_h + rel_w) v per (batch x head) row of q (n, h * w, head_dim), as
    oneDNN GEMMs over `ONEDNN_ATTENTION_ROWS` query rows at a time (see module doc); the bias adds in
    segment-anything's order."""
    h, w = size
    n, tokens, _ = q.shape
    r_q = q.reshape(n, h, w, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh).reshape(n, tokens, h)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw).reshape(n, tokens, w)
    scaled = q * scale
    out = q.new_empty(n, tokens, v.shape[-1])
    step = ONEDNN_ATTENTION_ROWS
    for i in range(n):
        keys, values_t = k[i].contiguous(), v[i].t().contiguous()  # oneDNN "weights": (N, K)
        for start in range(0, tokens, step):
            rows = slice(start, start + step)
            scores = linear_weights(scaled[i, rows], keys)
            grid = scores.view(-1, h, w)
            grid.add_(rel_h[i, rows, :, None]).add_(rel_w[i, rows, None, :])
            torch.softmax(scores, dim=-1, out=scores)
            out[i, rows] = linear_weights(scores, values_t)
    return out


def _rows_per_step(q: torch.Tensor) -> int:
    chunk = LeanAttention.chunk_bytes
    if chunk is None or q.device.type != "cpu":
        return q.shape[0]
    return max(1, chunk // (q.shape[1] * q.shape[1] * q.element_size()))


def use_lean_blocks(module: nn.Module) -> nn.Module:
    """Give every segment-anything `Block` (and `Attention`) inside `module` the lean forward; returns it."""
    return _swap_classes(module, {Block: LeanBlock, Attention: LeanAttention})


def use_segment_anything(module: nn.Module) -> nn.Module:
    """The plain segment-anything forward everywhere in `module` again (for comparisons); returns it.

    Also turns `build_sam`'s oneDNN linears (the mask decoder's) back into `nn.Linear`."""
    return _swap_classes(module, {LeanBlock: Block, LeanAttention: Attention, OneDNNLinear: nn.Linear})


def _swap_classes(module: nn.Module, classes: dict[type, type]) -> nn.Module:
    """Change the class of every submodule whose exact type is a key (parameters and keys stay)."""
    for child in module.modules():
        new = classes.get(type(child))
        if new is not None:
            child.__class__ = new
    return module
