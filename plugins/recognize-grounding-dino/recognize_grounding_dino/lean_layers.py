"""Leaner forwards for six of transformers' Grounding DINO modules: same weights, the same results
within float32 rounding (some bit for bit, as each item below says; where it says so,
tests/test_gd_lean_layers.py asserts `torch.equal` against transformers' module on this project's
x86 CPU, AMD EPYC; another CPU's kernels could round differently, and those tests would say so; the
folded fusion attention sums in another order and is judged against a float64 run instead).

Issue 11 measured our transformers-based model slower on CPU than the official code, with `copy_`
and `cat` (layout shuffles) taking a quarter of the operator time. The arithmetic of both
implementations is the same; what differs is how many times the big activations are rewritten in
memory between the GEMMs. `lean(model)` swaps in forwards that skip the rewrites and keeps every
parameter name, so checkpoints load as before. Each difference, and why it leaves results as they were:

- **Deformable attention sampling** (`GatherSampling`, the default, used by every encoder and
  decoder layer): one weighted gather of value rows instead of `grid_sample` per level (see its
  docstring); equal to `grid_sample` within float32 rounding of the sampling coordinates.
  `DeformableSampling` (`lean(model, sampling="grid_sample")`) is the previous lean path, kept
  for side-by-side comparison: transformers, like the official `multi_scale_deformable_attn_pytorch`,
  copies the value tensor once per level into the `grid_sample` layout, then `torch.stack`s the
  four levels' samples (a copy of the largest activation of the encoder: heads x dims x tokens x
  16 points), multiplies by the attention weights (another) and sums. There the value is laid out
  once for all levels (each level is a view of it), and each level's weighted samples are written
  straight into their slice of one buffer, which is then summed as before: the same products
  summed in the same order, so the output is bit-for-bit the one transformers computes (tested).
- **Image-text fusion attention** (`LeanBiMultiHeadAttention` over `GroundingDinoBiMultiHeadAttention`):
  transformers repeats each padding mask per head and `masked_fill_`s the full image x text
  attention matrices with it even when nothing is padded (a single image, or a batch of one size,
  has no padded pixels; a single caption no padded tokens). Here a mask with no True entry is
  skipped: filling nothing changes nothing (the official code does the same fills). In inference
  the default (`FOLD_FUSION`) folds the three image-side projections through the ~50-token text
  side (`_folded`: logits = X (k Wq)^T + k bq, and likewise for the two value paths), which
  leaves one [pixels, heads * tokens] GEMM each way instead of three [pixels, 256] x [256, 1024]
  projections and the per-head `bmm`s (~25% of the model's FLOPs are not executed; the forward
  3.29 -> 2.68 s at 800 x 1333, `benchmarks/README.md`). Not bit for bit: the same quantities
  summed in another order, so the criterion is a float64 run of transformers' forward, which the
  fold is as close to as transformers' own float32 forward (within 4x of its error in the tests,
  with weights ~5x larger than trained ones; as close at the released size). The max subtractions,
  clamps, masks and softmaxes are transformers', in its order. With `FOLD_FUSION = False`, with
  quantised weights (the `int8` fast mode) or with image-side projections that are not plain
  Linears (a subclass, a wrapper, hooks: their forward must run), `_strided_heads` runs
  transformers' arithmetic with fewer copies: transformers (and the official code) copy the ~17k x
  1024 image queries and values into a per-head layout (`_reshape`: `.transpose(1, 2).contiguous()`),
  multiply the queries by the head scale (another pass), and copy the attention output back from
  per-head to per-pixel layout before `out_vision_proj`; there the heads stay strided views that
  `bmm` reads as they are, each head's output is written straight into its columns of
  `out_vision_proj`'s input, and the scale multiplies the ~50-token text keys instead: `(q * s) . k
  == q . (k * s)` exactly when `s` is a power of two (it is 1/16 for the 256-wide heads of both
  released models; any other head size scales the queries as transformers does): bit for bit on
  this CPU with one thread, within float32 rounding with two (`bmm` splits its work differently on
  strided views). Autograd, training and autocast (the bf16 fast mode) run transformers' forward.
- **Encoder image layer's feed-forward** (`LeanDeformableLayer` over `GroundingDinoDeformableLayer`):
  `fc1`'s ReLU and `fc2`'s residual add are applied by oneDNN on the GEMMs' output tiles
  (`recognize.onednn_linear.linear(relu=True / residual=...)`), instead of two more passes over the
  17k x 2048 and 17k x 256 activations. `relu` and `+` on the same values: bit for bit with the
  oneDNN Linears the exact path uses anyway (tested; within rounding of plain torch's GEMM elsewhere).
  Autograd, training, autocast and other activations run transformers' forward.
- **Swin layer** (`LeanSwinLayer` over `SwinLayer`): transformers (like the official Swin) pads
  the normalised map to a multiple of the window (a copy), rolls it by the shift (a copy), cuts it
  into windows (`window_partition`: a copy), and after the attention undoes the three (two copies
  and a crop `.contiguous()`): here the pad + roll + partition is one `index_select` with indices
  computed once per map size (pad pixels are zero rows, as the zero padding gives), and the way
  back is one `index_select`; the MLP's GELU (erf) and its residual add run inside the oneDNN
  GEMMs. Pure data movement plus the same arithmetic: bit for bit on this CPU with the oneDNN
  Linears of the exact path (tested; within rounding of plain torch's GEMMs). Drop path
  (stochastic depth) is the identity outside training, so a layer with a `SwinDropPath` (the
  released configs give one to every layer but the first) takes the lean path in eval. Autograd,
  training, autocast and non-GELU activations run transformers' forward.
- **Deformable attention** (`LeanDeformableAttention`): transformers `masked_fill`s the value
  projection with the padding mask in every layer (a copy of the value) even when nothing is
  padded; a mask that keeps everything is skipped, as for the fusion attention. For point
  reference points (2 coordinates: the encoder's) the forward is transformers' own, re-written so
  that the sampling locations' broadcasts run over contiguous blocks (21 -> 2 ms per encoder
  layer): the same divisions and additions, bit for bit (tested against transformers' forward, so
  a change there shows up as a failure). Box reference points (4 coordinates: the decoder's) run
  transformers' forward.
- **Swin window attention** (`SwinAttention`): transformers 5 splits Swin's query/key/value
  projection into three Linear layers (three GEMMs over every window token); the official Swin has
  one fused `qkv` Linear. Here the three weights are concatenated (cached until a weight changes)
  and applied as one GEMM, as the official code does (through oneDNN on AVX-512 CPUs in fp32, as
  every Linear of the exact path: `recognize.onednn_linear`). The attention itself is transformers' own
  code path. A GEMM's blocking may round the last bit differently for a wider output, so this one
  is equal within float32 rounding (the plugin's parity tests against the official code hold), not
  bit-for-bit with transformers' three GEMMs. Quantised weights (the `int8` fast mode) fall back to
  transformers' forward.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from recognize.onednn_linear import OneDNNLinear, linear, linear_weights

#: Fold the fusion attention's image-side projections through the text side
#: (`LeanBiMultiHeadAttention._folded`); False: transformers' products (counting FLOPs as today).
FOLD_FUSION = True


class DeformableSampling(nn.Module):
    """Multi-scale deformable attention's sampling and weighting (no parameters): the same call
    signature as transformers' `MultiScaleDeformableAttention`, whose place it takes."""

    def forward(self, value: torch.Tensor, value_spatial_shapes: torch.Tensor,
                value_spatial_shapes_list: list[tuple[int, int]], level_start_index: torch.Tensor,
                sampling_locations: torch.Tensor, attention_weights: torch.Tensor, im2col_step: int) -> torch.Tensor:
        batch, _, heads, dims = value.shape
        _, queries, _, levels, points, _ = sampling_locations.shape
        # [B, S, h, d] -> [B*h, d, S] once; each level is a [B*h, d, H, W] view of it
        value = value.permute(0, 2, 3, 1).reshape(batch * heads, dims, -1)
        grids = 2 * sampling_locations - 1
        weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
        weighted = torch.empty(batch * heads, dims, queries, levels * points, dtype=value.dtype, device=value.device)
        start = 0
        for level, (height, width) in enumerate(value_spatial_shapes_list):
            value_level = value[:, :, start:start + height * width].view(batch * heads, dims, height, width)
            start += height * width
            grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
            sampled = F.grid_sample(value_level, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            span = slice(level * points, (level + 1) * points)
            torch.mul(sampled, weights[..., span], out=weighted[..., span])
        output = weighted.sum(-1).view(batch, heads * dims, queries)
        return output.transpose(1, 2).contiguous()


#: Zero rows/columns around each level's map in `GatherSampling`'s value table: a sampling point's
#: top-left corner, clamped to [-2, size], then lies in [-2, size] and its bottom-right in [-1, size + 1].
BORDER = 2


class GatherSampling(nn.Module):
    """Multi-scale deformable attention as one weighted gather (no parameters; the same call
    signature as transformers' `MultiScaleDeformableAttention`, whose place it takes).

    Why: `grid_sample` reads each level in NCHW layout, so every bilinear corner is fetched one
    channel at a time across the whole map, and the samples come out as a [heads, dims, queries,
    16] buffer that is multiplied by the attention weights and summed: three passes over the
    largest activation of the encoder. The arithmetic is a sparse matrix product: each output row
    (one query, one head) is a weighted sum of 4 levels x 4 points x 4 corners = 64 value rows.
    Here the value is laid out once as a table of rows of `dims` floats, each level's map framed
    by `BORDER` zero pixels; the corner rows and bilinear weights are computed once for all levels
    and points, the attention weight folded into each corner's weight, and
    `F.embedding_bag(mode="sum", per_sample_weights=...)` sums the 64 weighted rows. A corner
    outside the map reads a zero of the frame, as `grid_sample(padding_mode="zeros")` reads zeros
    there (no validity masks to compute); far-off points are clamped into the frame, and a NaN or
    infinite location gives NaN for its query and head, as grid_sample's NaN sample does. Pixel
    coordinates follow `grid_sample(align_corners=False)`. The same products summed in another
    order: equal within the float32 rounding of the sampling coordinates (the size of
    `grid_sample`'s own float32 error against float64), not bit for bit.
    """

    def forward(self, value: torch.Tensor, value_spatial_shapes: torch.Tensor,
                value_spatial_shapes_list: list[tuple[int, int]], level_start_index: torch.Tensor,
                sampling_locations: torch.Tensor, attention_weights: torch.Tensor, im2col_step: int) -> torch.Tensor:
        batch, _, heads, dims = value.shape
        _, queries, _, levels, points, _ = sampling_locations.shape
        shapes = [(int(h), int(w)) for h, w in value_spatial_shapes_list]
        # one dtype for the sum (under bf16 autocast the value is bf16, the locations and attention
        # weights float32): the wider one, so the sampling is never less precise than its inputs
        dtype = torch.promote_types(value.dtype, torch.promote_types(sampling_locations.dtype, attention_weights.dtype))
        table = framed_table(value.to(dtype), shapes)
        indices, weights = corner_weights(shapes, sampling_locations.to(dtype), attention_weights.to(dtype),
                                          table.shape[1])
        output = F.embedding_bag(indices.view(-1, levels * points * 4), table.view(-1, dims),
                                 per_sample_weights=weights.view(-1, levels * points * 4), mode="sum")
        return output.view(batch, queries, heads * dims)


def framed_table(value: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
    """[batch, tokens, heads, dims] -> [batch, framed tokens, heads, dims]: each level's map with
    `BORDER` zero pixels on every side, the levels one after another."""
    batch, _, heads, dims = value.shape
    framed = sum((h + 2 * BORDER) * (w + 2 * BORDER) for h, w in shapes)
    table = value.new_zeros(batch, framed, heads, dims)
    start = framed_start = 0
    for h, w in shapes:
        inner = table[:, framed_start:framed_start + (h + 2 * BORDER) * (w + 2 * BORDER)]
        inner = inner.view(batch, h + 2 * BORDER, w + 2 * BORDER, heads, dims)[:, BORDER:BORDER + h, BORDER:BORDER + w]
        inner.copy_(value[:, start:start + h * w].view(batch, h, w, heads, dims))
        start += h * w
        framed_start += (h + 2 * BORDER) * (w + 2 * BORDER)
    return table


def corner_weights(shapes: list[tuple[int, int]], locations: torch.Tensor, attention_weights: torch.Tensor,
                   tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the framed value table (`framed_table`: [batch, tokens, heads] flattened) and weights
    of the four bilinear corners of every sampling point, both [batch, queries, heads, 4, levels,
    points] (corners top-left, top-right, bottom-left, bottom-right: within a row, the order of a
    sum's terms)."""
    batch, queries, heads, levels, points, _ = locations.shape
    device, dtype = locations.device, locations.dtype
    index_type = torch.int32 if batch * tokens * heads < 2 ** 31 else torch.int64

    def per_point(values: list[int], kind: torch.dtype) -> torch.Tensor:
        # one value per level, as a contiguous [levels, points] block: every broadcast below then runs
        # over contiguous runs of levels * points numbers (vectorised), where a [levels, 1] operand
        # made the innermost loop 4 long with a stride-0 operand (~2.5x slower; the same numbers)
        return torch.tensor(values, dtype=kind, device=device).view(levels, 1).expand(levels, points).contiguous()

    framed_widths = [w + 2 * BORDER for _, w in shapes]
    # the table row of pixel (0, 0) of each level
    origins, start = [], 0
    for (h, _w), framed_width in zip(shapes, framed_widths):
        origins.append(start + BORDER * framed_width + BORDER)
        start += (h + 2 * BORDER) * framed_width
    widths, heights = per_point([w for _, w in shapes], dtype), per_point([h for h, _ in shapes], dtype)
    origins_t, row_steps = per_point(origins, index_type), per_point(framed_widths, index_type)
    frame_edge = torch.tensor(-BORDER, dtype=index_type, device=device)
    last_rows, last_columns = (per_point(sizes, index_type) for sizes in ([h for h, _ in shapes], [w for _, w in shapes]))

    def axis(coordinates: torch.Tensor, size: torch.Tensor, last: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # grid_sample's pixel coordinate (align_corners=False), its floor clamped into the frame,
        # and the weights of the low and high corners. Clamped as an integer: a NaN or infinite
        # coordinate converts to some integer (which one is the hardware's choice), the clamp puts
        # it in the frame, and its weights (NaN - NaN, inf - inf) are NaN, so the output comes out
        # NaN as grid_sample's does, where a float clamp keeps NaN and the index is out of range
        pixels = (coordinates * size).sub_(0.5)
        low = pixels.floor()
        high_weight = pixels.sub_(low)
        low_weight = 1 - high_weight
        return torch.clamp(low.to(index_type), min=frame_edge, max=last), low_weight, high_weight

    x_low, x_low_weight, x_high_weight = axis(locations[..., 0], widths, last_columns)
    y_low, y_low_weight, y_high_weight = axis(locations[..., 1], heights, last_rows)
    y_low_weight.mul_(attention_weights)
    y_high_weight.mul_(attention_weights)
    weights = torch.empty(batch, queries, heads, 4, levels, points, dtype=dtype, device=device)
    torch.mul(y_low_weight, x_low_weight, out=weights[:, :, :, 0])
    torch.mul(y_low_weight, x_high_weight, out=weights[:, :, :, 1])
    torch.mul(y_high_weight, x_low_weight, out=weights[:, :, :, 2])
    torch.mul(y_high_weight, x_high_weight, out=weights[:, :, :, 3])
    # table rows: ((b * tokens + token) * heads + head)
    top_left = y_low.mul_(row_steps).add_(x_low).add_(origins_t).mul_(heads)
    top_left.add_(torch.arange(heads, dtype=index_type, device=device).view(heads, 1, 1))
    if batch > 1:
        top_left.add_((torch.arange(batch, dtype=index_type, device=device) * (tokens * heads))
                      .view(batch, 1, 1, 1, 1))
    indices = torch.empty(batch, queries, heads, 4, levels, points, dtype=index_type, device=device)
    indices[:, :, :, 0] = top_left
    torch.add(top_left, heads, out=indices[:, :, :, 1])
    torch.add(top_left, row_steps * heads, out=indices[:, :, :, 2])
    torch.add(indices[:, :, :, 2], heads, out=indices[:, :, :, 3])
    return indices, weights


def _no_padding(mask: torch.Tensor | None) -> bool:
    """True for an absent or all-False mask; only checked on CPU (on a GPU the check would cost a
    host sync, and the fill is cheap there)."""
    return mask is None or (mask.device.type == "cpu" and not bool(mask.any()))


def _autocast(tensor: torch.Tensor) -> bool:
    """Under autocast (the bf16 fast mode) the lean forwards defer to transformers': their fused
    residual adds and `bmm(out=...)` buffers would keep a bf16 result where transformers' `+`
    promotes to float32."""
    return torch.is_autocast_enabled(tensor.device.type)


def _power_of_two(value: float) -> bool:
    mantissa, _ = math.frexp(value)
    return value > 0 and mantissa == 0.5


class LeanBiMultiHeadAttention:
    """Mixin over transformers' `GroundingDinoBiMultiHeadAttention` (see the module docstring):
    all-False masks are dropped; in inference the image-side projections are folded through the
    text side (`_folded`), or, where that does not apply, the heads stay views (`_strided_heads`)."""

    def forward(self, vision_features, text_features, vision_attention_mask=None, text_attention_mask=None):
        if _no_padding(vision_attention_mask):
            vision_attention_mask = None
        if _no_padding(text_attention_mask):
            text_attention_mask = None
        if self.training or torch.is_grad_enabled() or _autocast(vision_features):
            return super().forward(vision_features, text_features, vision_attention_mask=vision_attention_mask,
                                   text_attention_mask=text_attention_mask)
        if FOLD_FUSION and self._foldable():
            return self._folded(vision_features, text_features, vision_attention_mask, text_attention_mask)
        return self._strided_heads(vision_features, text_features, vision_attention_mask, text_attention_mask)

    def _foldable(self) -> bool:
        """The fold reads the image-side projections' weights instead of calling them: only for plain
        Linears with plain tensors and no hooks (a subclass, a LoRA-style wrapper or a hook changes
        what calling them computes; quantised weights, the `int8` fast mode, are tensor subclasses)."""
        image_side = (self.vision_proj, self.values_vision_proj, self.out_vision_proj)
        return (all(type(m) in (nn.Linear, OneDNNLinear) and not m._forward_hooks and not m._forward_pre_hooks
                    for m in image_side)
                and all(_plain(p) for p in self.parameters()))

    def _strided_heads(self, vision_features, text_features, vision_attention_mask, text_attention_mask):
        """transformers' arithmetic with the heads as strided views: with `FOLD_FUSION = False` and
        where the fold does not apply (`_foldable`: quantised weights, wrapped or hooked Linears)."""
        batch, pixels, _ = vision_features.shape
        tokens = text_features.shape[1]
        heads, dims = self.num_heads, self.head_dim

        def split(states: torch.Tensor, length: int) -> torch.Tensor:  # [B, n, h*d] -> [B, h, n, d], a view
            return states.view(batch, length, heads, dims).transpose(1, 2)

        vision_query = self.vision_proj(vision_features)
        text_key = self.text_proj(text_features)
        # q * s . k == q . k * s exactly when s is a power of two (1/16 for 256-d heads): scale the
        # 51-token keys, not the 17k-pixel queries
        if _power_of_two(self.scale):
            text_key = text_key * self.scale
        else:
            vision_query = vision_query * self.scale
        vision_value = split(self.values_vision_proj(vision_features), pixels)
        text_value = split(self.values_text_proj(text_features), tokens)
        vision_query, text_key = split(vision_query, pixels), split(text_key, tokens)
        # bmm reads the strided head views as they are (a copy per head was transformers' `_reshape`)
        attn_weights = vision_query.new_empty(batch, heads, pixels, tokens)
        for b in range(batch):
            torch.bmm(vision_query[b], text_key[b].transpose(-1, -2), out=attn_weights[b])
        # from here on transformers' arithmetic, on [B, h, pixels, tokens] instead of [B*h, ...]
        attn_weights = attn_weights.sub_(attn_weights.max()).clamp_(min=-50000, max=50000)
        attn_weights_transposed = attn_weights.transpose(-1, -2)
        text_attn_weights = attn_weights_transposed - torch.max(attn_weights_transposed, dim=-1, keepdim=True)[0]
        text_attn_weights = text_attn_weights.clamp_(min=-50000, max=50000)
        if vision_attention_mask is not None:
            text_attn_weights.masked_fill_(vision_attention_mask[:, None, None, :], float("-inf"))
        text_attn_weights = text_attn_weights.softmax(dim=-1)
        if text_attention_mask is not None:
            attn_weights.masked_fill_(text_attention_mask[:, None, None, :], float("-inf"))
        vision_attn_weights = attn_weights.softmax(dim=-1)
        # each head's product written straight into its columns of the [B, pixels, h*d] input of
        # out_vision_proj (the transpose back is a view, not a copy)
        vision_attn_output = vision_attn_weights.new_empty(batch, pixels, heads * dims)
        text_attn_output = text_attn_weights.new_empty(batch, tokens, heads * dims)
        vision_out, text_out = split(vision_attn_output, pixels), split(text_attn_output, tokens)
        for b in range(batch):
            torch.bmm(vision_attn_weights[b], text_value[b], out=vision_out[b])
            torch.bmm(text_attn_weights[b], vision_value[b], out=text_out[b])
        vision_attn_output = self.out_vision_proj(vision_attn_output)
        text_attn_output = self.out_text_proj(text_attn_output)
        return ((vision_attn_output, vision_attn_weights.flatten(0, 1)),
                (text_attn_output, text_attn_weights.flatten(0, 1)))

    def _folded(self, vision_features, text_features, vision_attention_mask, text_attention_mask):
        """The attention with the three image-side projections folded into text-sized matrices.

        Why: with ~17k pixels and ~50 tokens, transformers spends most of this layer on three
        [pixels, 256] x [256, 1024] projections (the image queries, the image values and the output
        projection of the image side: 3 x 9.3 GFLOP per layer at 800 x 1333) and on `bmm`s whose
        inner size is the token count (slow GEMM shapes). Both products are linear in the image
        features, so each projection can be applied to the tokens' side instead (h heads of d dims,
        X the [pixels, C] image features, k, v the text keys and values):
        - logits_h = (X Wq_h^T + bq_h) k_h^T = X (k_h Wq_h)^T + k_h bq_h: one [pixels, C] x
          [C, h * tokens] GEMM;
        - image output = sum_h A_h (v_h Wo_h^T) + bo, A_h the image-side attention: one [pixels,
          h * tokens] x [h * tokens, C] GEMM;
        - text output_h = T_h (X Wv_h^T + bv_h) = (T_h X) Wv_h^T + rowsum(T_h) bv_h, T_h the
          text-side attention: one [h * tokens, pixels] x [pixels, C] GEMM, the rest token-sized.
        The same quantities summed in another order (float32 rounding: measured at 800 x 1333
        with 51 tokens as close to a float64 run of transformers' forward as transformers' own
        float32 forward, `benchmarks/README.md`); about a quarter of the model's FLOPs are not
        executed. The max subtractions, clamps, masks and softmaxes are transformers', on logits
        equal to its within rounding. At batch 1 the outputs and attention maps are views (the
        image-side map a permuted one, where transformers' is contiguous); at batch > 1 the maps
        are concatenated as transformers returns them.
        `benchmarks/` counts the FLOPs of transformers' forward (`FOLD_FUSION = False` while
        counting), as it counts every stage's ("FLOPs counted as today").
        """
        batch, pixels, _ = vision_features.shape
        tokens = text_features.shape[1]
        heads, dims = self.num_heads, self.head_dim
        query_weight, query_bias = self.vision_proj.weight, self.vision_proj.bias
        out_weight, out_bias = self.out_vision_proj.weight, self.out_vision_proj.bias
        value_weight, value_bias = self.values_vision_proj.weight, self.values_vision_proj.bias
        # [tokens, h*d] -> [h, tokens, d]; the scale goes on the ~50 keys, not on the 17k pixels' queries
        keys = (self.text_proj(text_features) * self.scale).view(batch, tokens, heads, dims).transpose(1, 2)
        text_values = self.values_text_proj(text_features).view(batch, tokens, heads, dims).transpose(1, 2)
        logits = []
        for b in range(batch):
            folded_queries = torch.matmul(keys[b], query_weight.unflatten(0, (heads, dims)))  # [h, tokens, C]
            folded_bias = (None if query_bias is None else                               # [h * tokens]
                           torch.matmul(keys[b], query_bias.reshape(heads, dims, 1)).reshape(heads * tokens))
            logits.append(linear_weights(vision_features[b], folded_queries.reshape(heads * tokens, -1),
                                         folded_bias).view(pixels, heads, tokens))
        # transformers subtracts the maximum over the whole batch, then clamps
        top = torch.stack([each.max() for each in logits]).max()
        vision_outputs, text_outputs, vision_maps, text_maps = [], [], [], []
        for b, image_logits in enumerate(logits):
            image_logits.sub_(top).clamp_(min=-50000, max=50000)
            by_token = image_logits.permute(1, 2, 0)                                         # [h, tokens, pixels]
            text_attn = torch.sub(by_token, by_token.amax(-1, keepdim=True),
                                  out=image_logits.new_empty(heads, tokens, pixels))
            text_attn.clamp_(min=-50000, max=50000)
            if vision_attention_mask is not None:
                text_attn.masked_fill_(vision_attention_mask[b][None, None, :], float("-inf"))
            text_attn = text_attn.softmax(dim=-1)
            if text_attention_mask is not None:
                image_logits.masked_fill_(text_attention_mask[b][None, None, :], float("-inf"))
            vision_attn = image_logits.softmax(dim=-1)                                       # [pixels, h, tokens]
            # image side: A [pixels, h*tokens] x (v_h Wo_h^T stacked) [h*tokens, C] + bo
            folded_out = torch.matmul(text_values[b], out_weight.unflatten(1, (heads, dims)).permute(1, 2, 0))
            vision_outputs.append(linear_weights(vision_attn.view(pixels, heads * tokens),
                                                 folded_out.reshape(heads * tokens, -1).t().contiguous(), out_bias))
            # text side: (T_h X) Wv_h^T + rowsum(T_h) bv_h, then transformers' out_text_proj
            attended = torch.mm(text_attn.view(heads * tokens, pixels), vision_features[b]).view(heads, tokens, -1)
            per_head = torch.matmul(attended, value_weight.unflatten(0, (heads, dims)).transpose(1, 2))
            if value_bias is not None:
                per_head.add_(text_attn.sum(-1, keepdim=True) * value_bias.reshape(heads, 1, dims))
            text_outputs.append(self.out_text_proj(per_head.transpose(0, 1).reshape(tokens, heads * dims)))
            vision_maps.append(vision_attn.permute(1, 0, 2))
            text_maps.append(text_attn)
        if batch == 1:  # views, no copies
            return ((vision_outputs[0][None], vision_maps[0]), (text_outputs[0][None], text_maps[0]))
        return ((torch.stack(vision_outputs), torch.cat(vision_maps)),
                (torch.stack(text_outputs), torch.cat(text_maps)))


class LeanDeformableAttention:
    """Mixin over transformers' `GroundingDinoMultiscaleDeformableAttention`: an attention mask that
    keeps every token (True = keep) is dropped, which skips the `masked_fill` copy of the value; in
    inference, the sampling locations around point reference points (2 coordinates: the encoder's)
    are computed with vectorisable broadcasts.

    Why the second: transformers computes `reference[:, :, None, :, None, :] + offsets /
    normalizer[None, None, None, :, None, :]`, broadcasts whose innermost run is the 2 (x, y)
    coordinates, which torch's element-wise loops cannot vectorise: ~21 ms per encoder layer at
    800 x 1333 for 4.6 M numbers. Here the divisor and the reference points are first expanded
    to the (levels, points, 2) block, so both operations run over contiguous runs of 32: ~2 ms.
    The same divisions and additions of the same numbers: bit for bit (tested). Box reference
    points (4 coordinates: the decoder's 900 queries) run transformers' forward. transformers' check
    that the spatial shapes cover the tokens is made here on the Python list (no host sync), always
    (`TRANSFORMERS_DISABLE_TORCH_CHECK` does not turn it off).
    """

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                position_embeddings=None, reference_points=None, spatial_shapes=None, spatial_shapes_list=None,
                level_start_index=None, output_attentions=False):
        if attention_mask is not None and _no_padding(~attention_mask):
            attention_mask = None
        # (the in-place add below keeps the offsets' dtype, where transformers' `+` would promote wider
        # reference points: those defer)
        if (self.training or torch.is_grad_enabled() or _autocast(hidden_states) or reference_points is None
                or reference_points.shape[-1] != 2 or spatial_shapes_list is None
                or reference_points.dtype != hidden_states.dtype):
            return super().forward(hidden_states, attention_mask=attention_mask,
                                   encoder_hidden_states=encoder_hidden_states,
                                   encoder_attention_mask=encoder_attention_mask,
                                   position_embeddings=position_embeddings, reference_points=reference_points,
                                   spatial_shapes=spatial_shapes, spatial_shapes_list=spatial_shapes_list,
                                   level_start_index=level_start_index, output_attentions=output_attentions)
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings
        batch, queries, _ = hidden_states.shape
        length = encoder_hidden_states.shape[1]
        if sum(int(h) * int(w) for h, w in spatial_shapes_list) != length:
            raise ValueError("Make sure to align the spatial shapes with the sequence length of the encoder hidden states")
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:
            value = value.masked_fill(~attention_mask[..., None], float(0))
        value = value.view(batch, length, heads, self.d_model // heads)
        offsets = self.sampling_offsets(hidden_states).view(batch, queries, heads, levels, points, 2)
        attention_weights = F.softmax(self.attention_weights(hidden_states).view(batch, queries, heads, levels * points),
                                      -1).view(batch, queries, heads, levels, points)
        # transformers: reference[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets.dtype)
        divisor = normalizer[:, None, :].expand(levels, points, 2).contiguous()
        reference = reference_points[:, :, None, :, None, :].expand(batch, queries, 1, levels, points, 2).contiguous()
        locations = torch.div(offsets, divisor).add_(reference)  # a + b == b + a
        output = self.attn(value, spatial_shapes, spatial_shapes_list, level_start_index, locations,
                           attention_weights, self.im2col_step)
        return self.output_proj(output), attention_weights


class LeanDeformableLayer:
    """Mixin over transformers' `GroundingDinoDeformableLayer` (the encoder's image layer): the
    feed-forward's ReLU and its residual add run inside the two GEMMs (see the module docstring)."""

    def forward(self, hidden_states, attention_mask, position_embeddings=None, reference_points=None,
                spatial_shapes=None, spatial_shapes_list=None, level_start_index=None, output_attentions=False):
        if (self.training or torch.is_grad_enabled() or not isinstance(self.activation_fn, nn.ReLU)
                or _autocast(hidden_states)):
            return super().forward(hidden_states, attention_mask, position_embeddings, reference_points,
                                   spatial_shapes, spatial_shapes_list, level_start_index, output_attentions)
        residual = hidden_states
        hidden_states, attn_weights = self.self_attn(
            hidden_states=hidden_states, attention_mask=attention_mask, encoder_hidden_states=hidden_states,
            encoder_attention_mask=attention_mask, position_embeddings=position_embeddings,
            reference_points=reference_points, spatial_shapes=spatial_shapes,
            spatial_shapes_list=spatial_shapes_list, level_start_index=level_start_index,
            output_attentions=output_attentions)
        hidden_states = self.self_attn_layer_norm(residual + hidden_states)
        expanded = linear(self.fc1, hidden_states, relu=True)
        hidden_states = self.final_layer_norm(linear(self.fc2, expanded, residual=hidden_states))
        return hidden_states, attn_weights


def _plain(tensor: torch.Tensor) -> bool:
    return type(tensor) in (torch.Tensor, nn.Parameter) and tensor.layout == torch.strided


class FusedQKVSwinAttention:
    """Mixin over transformers' `SwinAttention`: q/k/v projections as one GEMM (see the module docstring)."""

    def _fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        projections = (self.q_proj, self.k_proj, self.v_proj)
        tensors = [t for p in projections for t in (p.weight, p.bias) if t is not None]
        if not all(_plain(t) for t in tensors):
            return None
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        cached = self.__dict__.get("_qkv")
        if cached is None or cached[0] != key:
            # a normal tensor even under inference mode (the detector's forward): an inference tensor has no
            # version counter, and `linear_weights(packed=True)` packs only tensors that have one
            with torch.inference_mode(False), torch.no_grad():
                weight = torch.cat([p.weight for p in projections])
                has_bias = all(p.bias is not None for p in projections)
                bias = torch.cat([p.bias for p in projections]) if has_bias else None
            if any(p.bias is not None for p in projections) and not has_bias:
                return None
            cached = self.__dict__["_qkv"] = (key, weight, bias)
        return cached[1], cached[2]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any):
        fused = None if torch.is_grad_enabled() else self._fused_qkv()
        if fused is None:
            return super().forward(hidden_states, attention_mask, **kwargs)
        from transformers.models.swin import modeling_swin

        input_shape = hidden_states.shape[:-1]
        qkv = linear_weights(hidden_states, *fused, packed=True)  # the fused weight is kept: packed once
        qkv = qkv.view(*input_shape, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        query_states, key_states, value_states = qkv.unbind(0)
        # from here on transformers' SwinAttention.forward, unchanged
        relative_position_bias = self.relative_position_bias()
        if attention_mask is not None:
            num_windows = attention_mask.shape[0]
            batch_size = input_shape[0] // num_windows
            seq_len = input_shape[1]
            attention_mask = (attention_mask.unsqueeze(1).unsqueeze(0).expand(batch_size, -1, -1, -1, -1)
                              .reshape(-1, 1, seq_len, seq_len))
            combined_mask = relative_position_bias + attention_mask
        else:
            combined_mask = relative_position_bias
        attention_interface = modeling_swin.ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, modeling_swin.eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self, query_states, key_states, value_states, combined_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling, **kwargs)
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


def window_indices(height: int, width: int, window: int, shift: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Swin's pad + cyclic shift + window partition of a [height * width] token map as one gather,
    and its inverse: `(gather, padding, scatter)`. Window row `k` (transformers' window order,
    `window_partition(torch.roll(pad(x), (-shift, -shift)))`) reads token `gather[k]`, except the rows
    listed in `padding` (pad pixels: zeros); token `t` of the map is window row `scatter[t]`
    (`window_reverse`, `torch.roll(+shift)` and the crop in one)."""
    padded_h = height + (window - height % window) % window
    padded_w = width + (window - width % window) % window
    rows = torch.arange(padded_h, device=device)
    cols = torch.arange(padded_w, device=device)
    # window row order: (window row, window column, row in window, column in window)
    win_rows = rows.view(padded_h // window, 1, window, 1)
    win_cols = cols.view(1, padded_w // window, 1, window)
    source_r = (win_rows + shift) % padded_h
    source_c = (win_cols + shift) % padded_w
    real = (source_r < height) & (source_c < width)
    gather = torch.where(real, source_r * width + source_c, torch.zeros((), dtype=torch.long, device=device))
    gather = gather.reshape(-1)
    padding = (~real).reshape(-1).nonzero().flatten()
    # inverse: the rolled position of real pixel (r, c), then its window row
    rolled_r = (rows[:height] - shift) % padded_h
    rolled_c = (cols[:width] - shift) % padded_w
    windows_per_row = padded_w // window
    scatter = (((rolled_r // window) * windows_per_row).view(-1, 1) + (rolled_c // window).view(1, -1)) * window * window
    scatter = scatter + ((rolled_r % window) * window).view(-1, 1) + (rolled_c % window).view(1, -1)
    return gather, padding, scatter.reshape(-1)


def _drop_path_acts(drop_path: nn.Module) -> bool:
    """Whether a Swin layer's drop path (stochastic depth) can change its input: transformers'
    `SwinDropPath` is the identity outside training (the released configs give one to every layer
    after the first); any other module, a subclass included, might act."""
    from transformers.models.swin.modeling_swin import SwinDropPath

    if isinstance(drop_path, nn.Identity):
        return False
    return drop_path.training or type(drop_path) is not SwinDropPath


class LeanSwinLayer:
    """Mixin over transformers' `SwinLayer` (see the module docstring): pad, cyclic shift and window
    partition as one gather (and back as one), the MLP's GELU and residual add inside its GEMMs."""

    def forward(self, hidden_states: torch.Tensor, input_dimensions: tuple[int, int], always_partition: bool = False,
                **kwargs: Any):
        act = self.mlp.activation_fn
        if (self.training or torch.is_grad_enabled() or getattr(act, "act", None) is not F.gelu
                or _drop_path_acts(self.drop_path)
                or kwargs.get("output_attentions") or _autocast(hidden_states)):
            return super().forward(hidden_states, input_dimensions, always_partition, **kwargs)
        if not always_partition:
            self.set_shift_and_window_size(input_dimensions)
        height, width = input_dimensions
        batch, _, channels = hidden_states.shape
        window, shift = int(self.window_size), int(self.shift_size)
        key = (height, width, window, shift, hidden_states.device)
        cached = self.__dict__.get("_windows")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_windows"] = (key, window_indices(height, width, window, shift, hidden_states.device))
        gather, padding, scatter = cached[1]
        windows = self.layernorm_before(hidden_states).index_select(1, gather)
        if padding.numel():
            windows.index_fill_(1, padding, 0)
        padded_h = height + (window - height % window) % window
        padded_w = width + (window - width % window) % window
        attn_mask = self.get_attn_mask(padded_h, padded_w, dtype=hidden_states.dtype, device=hidden_states.device)
        attention_output, attn_weights = self.attention(windows.view(-1, window * window, channels), attn_mask, **kwargs)
        hidden_states = hidden_states + attention_output.view(batch, -1, channels).index_select(1, scatter)
        expanded = linear(self.mlp.fc1, self.layernorm_after(hidden_states), gelu=True)
        return linear(self.mlp.fc2, expanded, residual=hidden_states), attn_weights


_MIXED: dict[tuple[type, type], type] = {}


def _mix(module: nn.Module, mixin: type) -> None:
    if not isinstance(module, mixin):
        base = type(module)
        if (mixin, base) not in _MIXED:
            _MIXED[(mixin, base)] = type(f"Lean{base.__name__}", (mixin, base), {"__module__": __name__})
        module.__class__ = _MIXED[(mixin, base)]


#: Deformable attention sampling implementations `lean` can put in: "gather" (the default, one
#: weighted gather) and "grid_sample" (the previous lean path, grid_sample per level; kept so the
#: two can be compared side by side, in tests and in `benchmarks/bench_gdino_official.py`).
SAMPLINGS: dict[str, type[nn.Module]] = {"gather": GatherSampling, "grid_sample": DeformableSampling}


def lean(model: nn.Module, sampling: str = "gather") -> nn.Module:
    """Swap the leaner forwards into `model` (in place; parameter names and values unchanged);
    `sampling` picks the deformable attention sampling (`SAMPLINGS`)."""
    kind = SAMPLINGS[sampling]
    for module in model.modules():
        name = type(module).__name__
        if isinstance(module, LeanDeformableAttention) or name == "GroundingDinoMultiscaleDeformableAttention":
            if type(module.attn) is not kind:
                module.attn = kind()
            _mix(module, LeanDeformableAttention)
        elif name == "GroundingDinoBiMultiHeadAttention":
            _mix(module, LeanBiMultiHeadAttention)
        elif name == "GroundingDinoDeformableLayer":
            _mix(module, LeanDeformableLayer)
        elif name == "SwinLayer":
            _mix(module, LeanSwinLayer)
        elif name == "SwinAttention" and all(hasattr(module, p) for p in ("q_proj", "k_proj", "v_proj")):
            _mix(module, FusedQKVSwinAttention)
    return model
