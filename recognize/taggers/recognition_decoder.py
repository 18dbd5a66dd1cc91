"""The recognition decoder (Query2Label style) shared by RAM, RAM++ and Tag2Text.

API: `DecoderConfig` (hidden, layers, heads, intermediate, encoder_width, eps), read from the official
BERT-style JSON with `DecoderConfig.from_bert_config(d, encoder_width)`; `RecognitionDecoder(config)`
with `forward(queries [B,C,H], image_tokens [B,N,E]) -> [B,C,H]`; `official_keys(prefix)` maps this
module's state-dict keys to the official ones (`tagging_head.encoder.layer.N.crossattention...`).

Why it is ours and this small: the official module is a BLIP BERT with its embeddings and every
self-attention deleted, so what is left is per layer: cross-attention from the label queries to the
image tokens (all valid, no mask), then post-LN residual, then a GELU (erf) feed-forward with post-LN.
No self-attention between labels, no position embeddings, no final norm. The classifier belongs to
each model. Once its Linears are on oneDNN (`use_onednn_linears`, as the stages do at load), on CPU fp32
where oneDNN is used (`onednn_linear.ONEDNN`: AVX-512 CPUs by default) the two residual adds and the
GELU run inside oneDNN's GEMMs (`recognize.onednn_linear.linear`) and the cross-attention is two oneDNN
GEMMs per head: same operations, last-bit rounding differences only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recognize.onednn_linear import OneDNNLinear, applies_to, linear, linear_weights
from recognize.taggers.precomputed import cache_on

#: Fuse the residual adds and GELU into the Linear calls and run attention as oneDNN GEMMs, where the
#: model's Linears were moved to oneDNN (`use_onednn_linears`, as the stages do); False: plain torch.
FUSED = True


@dataclass(frozen=True)
class DecoderConfig:
    hidden_size: int = 768
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 3072
    encoder_width: int = 512
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_bert_config(cls, data: Mapping[str, Any], encoder_width: int) -> DecoderConfig:
        """From the official `q2l_config.json` format; `encoder_width` is what the model code sets."""
        act = data.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"unsupported hidden_act {act!r} (the official decoder uses exact 'gelu')")
        return cls(
            hidden_size=int(data["hidden_size"]),
            num_layers=int(data["num_hidden_layers"]),
            num_heads=int(data["num_attention_heads"]),
            intermediate_size=int(data["intermediate_size"]),
            encoder_width=int(encoder_width),
            layer_norm_eps=float(data.get("layer_norm_eps", 1e-12)),
        )


class DecoderLayer(nn.Module):
    """Cross-attention + feed-forward, each followed by residual and LayerNorm (post-LN)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        h = config.hidden_size
        if h % config.num_heads:
            raise ValueError(f"hidden size {h} is not a multiple of {config.num_heads} heads")
        self.num_heads = config.num_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(config.encoder_width, h)
        self.value = nn.Linear(config.encoder_width, h)
        self.attn_out = nn.Linear(h, h)
        self.attn_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(h, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, h)
        self.ffn_norm = nn.LayerNorm(h, eps=config.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, -1).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, image_tokens: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """`query`: `self.query(hidden)` when the caller already has it (shared queries, precomputed)."""
        q = self.query(hidden) if query is None else query
        k, v = self.key(image_tokens), self.value(image_tokens)
        # not under autocast: the fast modes keep the path their fidelity was measured on (and the unfused
        # `hidden + out` promotes a bf16 product to float32, where an in-place fused add would not)
        fused = FUSED and isinstance(self.attn_out, OneDNNLinear) and not torch.is_autocast_enabled(q.device.type)
        if fused and q.device.type == "cpu" and applies_to(k, q):
            context = self._attention_by_gemm(q, k, v)
        else:
            context = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
            context = context.transpose(1, 2).flatten(2)  # softmax(q k^T / sqrt(d)) v, no mask
        # residual adds and GELU inside oneDNN's GEMM on CPU fp32 (`recognize.onednn_linear.linear`; plain
        # torch elsewhere): the same operations without a separate pass over the [B, C, H] activations
        if not fused:
            hidden = self.attn_norm(hidden + self.attn_out(context))
            return self.ffn_norm(hidden + self.ffn_out(F.gelu(self.ffn_in(hidden))))
        hidden = self.attn_norm(linear(self.attn_out, context, residual=_batched(hidden, context)))
        return self.ffn_norm(linear(self.ffn_out, linear(self.ffn_in, hidden, gelu=True), residual=hidden))

    def _attention_by_gemm(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v per image and head as two oneDNN GEMMs (CPU fp32).

        Why not SDPA here: CPU flash attention splits the thousands of label queries into 32-256-row
        blocks and multiplies them with MKL's small-matrix sgemm, which ran at ~1/4 of oneDNN's rate
        on this project's AMD machine (1 thread: the decoders' two attentions took ~0.12 s of a RAM++
        forward for ~4 GFLOP). The scores of one head are small ([C, N], N = 145 image tokens), so the
        plain (not streaming) softmax is cheap, and it is the official BERT formula: (q k^T) / sqrt(d).
        """
        B, _, width = q.shape
        d = width // self.num_heads
        root = math.sqrt(d)
        images = []
        for b in range(B):
            heads = []
            for h in range(self.num_heads):
                cols = slice(h * d, (h + 1) * d)
                scores = linear_weights(q[b, :, cols], k[b, :, cols].contiguous())  # [C, N]: q k^T
                probs = scores.div_(root).softmax(dim=-1)
                heads.append(linear_weights(probs, v[b, :, cols].t().contiguous()))  # [C, d]
            images.append(torch.cat(heads, dim=-1))
        return images[0].unsqueeze(0) if B == 1 else torch.stack(images)


#: our sub-key -> official sub-key, inside `encoder.layer.N.`
_OFFICIAL_LAYER_KEYS = {
    "query": "crossattention.self.query",
    "key": "crossattention.self.key",
    "value": "crossattention.self.value",
    "attn_out": "crossattention.output.dense",
    "attn_norm": "crossattention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}


def _batched(hidden: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`hidden` with `like`'s shape: shared queries arrive expanded over the batch (a stride-0 view),
    which a fused add cannot read, so they are materialised (what the unfused `+` did implicitly)."""
    return hidden if hidden.is_contiguous() else hidden.expand_as(like).contiguous()


class RecognitionDecoder(nn.Module):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """queries [B,C,H] (or [C,H], shared by the batch), image tokens [B,N,E] -> [B,C,H]."""
        batch = image_tokens.shape[0]
        first_query = None
        if queries.ndim == 2:
            # the first layer's query projection of shared queries is the same for every image: kept
            # between calls while `queries` is the same tensor (`recognize.taggers.precomputed`)
            project = self.layers[0].query
            first = cache_on(self, "first_query").get([queries, *project.parameters()], lambda: project(queries))
            first_query = first.unsqueeze(0).expand(batch, -1, -1)
            queries = queries.unsqueeze(0).expand(batch, -1, -1)
        hidden = queries
        for i, layer in enumerate(self.layers):
            hidden = layer(hidden, image_tokens, first_query if i == 0 else None)
        return hidden

    def official_keys(self, prefix: str = "tagging_head") -> dict[str, str]:
        """This module's state-dict keys (without prefix) -> official checkpoint keys."""
        mapping = {}
        for key in self.state_dict():
            _, index, module, param = key.split(".")
            mapping[key] = f"{prefix}.encoder.layer.{index}.{_OFFICIAL_LAYER_KEYS[module]}.{param}"
        return mapping
