"""The BLIP-style BERT modules of Tag2Text: the tag encoder and the caption decoder.

API:
- `BertConfig` (sizes; `BertConfig.from_med_config(dict, encoder_width=...)` reads the official
  `med_config.json` format);
- `BertModel` (`tag_encoder`, and `text_decoder.bert`): `forward(input_ids, attention_mask,
  encoder_hidden_states, causal=False, cache=None)` -> last hidden states;
- `BertLMHeadModel` (`text_decoder`): adds the tied LM head; `forward(...)` -> logits;
- `DecoderCache` (key/value cache for incremental decoding) and `CaptionDecoder`, the view of a
  `BertLMHeadModel` over fixed encoder states that `recognize.taggers.generation` drives.

Why not a transformers class: BLIP modified BERT (no token-type embeddings, a cross-attention
block in every layer, a decoder with cross-attention to the tag encoder), so no stock class loads
the official keys. The module and parameter names here are the official ones
(`embeddings.{word_embeddings,position_embeddings,LayerNorm}`, `encoder.layer.N.{attention,
crossattention,intermediate,output}`, `cls.predictions.{transform,decoder,bias}`), so a checkpoint
maps key for key. The arithmetic follows the official code step for step (post-LN, eps from the
config, exact erf GELU, scores divided by sqrt(head_dim) after q.k, additive -10000 masks) so the
outputs match it to the last bit in most cases. The official decoder recomputes the whole prefix at
every step; `CaptionDecoder` keeps a key/value cache instead (same results, checked by the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASK_VALUE = -10000.0
"""Additive value for masked keys, as the official `get_extended_attention_mask`."""


@dataclass(frozen=True)
class BertConfig:
    """Sizes of one BLIP-BERT stack. Defaults: the released `med_config.json`."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30524
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    encoder_width: int = 768
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")

    @classmethod
    def from_med_config(cls, config: dict[str, Any], encoder_width: int | None = None) -> BertConfig:
        """Read the official JSON format (`med_config.json`); `encoder_width` overrides its value,
        as the official code does for the tag encoder (vision width)."""
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported hidden_act {config['hidden_act']!r} (only exact 'gelu')")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        return cls(
            hidden_size=int(config["hidden_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            max_position_embeddings=int(config.get("max_position_embeddings", 512)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
            encoder_width=int(encoder_width if encoder_width is not None else config.get("encoder_width", 768)),
            pad_token_id=int(config.get("pad_token_id", 0)),
        )


class BertEmbeddings(nn.Module):
    """Word + absolute position embeddings, then LayerNorm. No token-type embeddings (BLIP)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # persistent, as in the official state dict (the loader checks it is arange)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)))

    def forward(self, input_ids: Tensor, past_length: int = 0) -> Tensor:
        length = input_ids.shape[1]
        positions = self.position_ids[:, past_length : past_length + length]
        embeddings = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.LayerNorm(embeddings)


class BertSelfAttention(nn.Module):
    """Multi-head attention; keys and values from the sequence itself or from encoder states."""

    def __init__(self, config: BertConfig, is_cross_attention: bool) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.hidden_size // config.num_heads
        kv_width = config.encoder_width if is_cross_attention else config.hidden_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(kv_width, config.hidden_size)
        self.value = nn.Linear(kv_width, config.hidden_size)

    def split_heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        return self.split_heads(self.key(source)), self.split_heads(self.value(source))

    def forward(
        self,
        hidden_states: Tensor,
        keys_values: tuple[Tensor, Tensor],
        mask: Tensor | None = None,
    ) -> Tensor:
        query = self.split_heads(self.query(hidden_states))
        key, value = keys_values
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        probs = scores.softmax(dim=-1)
        context = torch.matmul(probs, value).permute(0, 2, 1, 3).contiguous()
        return context.view(*context.shape[:-2], self.num_heads * self.head_dim)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(hidden_states) + residual)


class BertAttention(nn.Module):
    """Attention plus its post-LN residual block (official names `self` and `output`)."""

    def __init__(self, config: BertConfig, is_cross_attention: bool = False) -> None:
        super().__init__()
        self.self = BertSelfAttention(config, is_cross_attention)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states: Tensor, keys_values: tuple[Tensor, Tensor], mask: Tensor | None) -> Tensor:
        return self.output(self.self(hidden_states, keys_values, mask), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return F.gelu(self.dense(hidden_states))  # exact erf GELU, transformers' ACT2FN["gelu"]


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(hidden_states) + residual)


@dataclass
class LayerCache:
    """Keys/values of one decoder layer: the growing self-attention ones and the fixed cross ones."""

    self_kv: tuple[Tensor, Tensor] | None = None
    cross_kv: tuple[Tensor, Tensor] | None = None


@dataclass
class DecoderCache:
    """Per-layer key/value cache for incremental decoding; `length` = tokens already seen."""

    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0

    def select(self, index: Tensor) -> DecoderCache:
        """Rows `index` of every cached tensor (beam reordering, batch expansion)."""

        def pick(kv: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor] | None:
            return None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))

        return DecoderCache(
            [LayerCache(pick(layer.self_kv), pick(layer.cross_kv)) for layer in self.layers], self.length
        )


class BertLayer(nn.Module):
    """Post-LN layer: self-attention, cross-attention to encoder states, feed-forward."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.crossattention = BertAttention(config, is_cross_attention=True)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        hidden_states: Tensor,
        self_mask: Tensor | None,
        encoder_hidden_states: Tensor | None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        self_kv = self.attention.self.keys_values(hidden_states)
        if cache is not None:
            if cache.self_kv is not None:
                self_kv = (torch.cat([cache.self_kv[0], self_kv[0]], 2), torch.cat([cache.self_kv[1], self_kv[1]], 2))
            cache.self_kv = self_kv
        hidden_states = self.attention(hidden_states, self_kv, self_mask)

        if cache is not None and cache.cross_kv is not None:
            cross_kv = cache.cross_kv
        else:
            if encoder_hidden_states is None:
                raise ValueError("encoder_hidden_states are required (every layer cross-attends)")
            cross_kv = self.crossattention.self.keys_values(encoder_hidden_states)
            if cache is not None:
                cache.cross_kv = cross_kv
        # the encoder states are never masked: the official code passes an all-ones image mask, and
        # the caption decoder attends to every tag-encoder position, padded ones included
        hidden_states = self.crossattention(hidden_states, cross_kv, None)
        return self.output(self.intermediate(hidden_states), hidden_states)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))


def padding_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, T] 1/0 -> additive [B, 1, 1, T] mask (0 / -10000), the official bidirectional mask."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_VALUE


def causal_mask(length: int, past_length: int, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive [B, 1, T, past+T] mask: a query sees every earlier token and itself (0), not later ones (-10000)."""
    total = past_length + length
    keys = torch.arange(total, device=device)
    queries = torch.arange(past_length, total, device=device)
    allowed = (keys[None, :] <= queries[:, None]).to(dtype)
    return ((1.0 - allowed) * MASK_VALUE).expand(batch, 1, length, total)


class BertModel(nn.Module):
    """Embeddings + layers, no pooler. Bidirectional (tag encoder) or causal (caption decoder)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        encoder_hidden_states: Tensor | None = None,
        causal: bool = False,
        cache: DecoderCache | None = None,
    ) -> Tensor:
        """Last hidden states [B, T, H]. With `cache`, `input_ids` are only the new tokens."""
        past = cache.length if cache is not None else 0
        hidden = self.embeddings(input_ids, past_length=past)
        batch, length = input_ids.shape
        if causal:
            if past and length == 1 and attention_mask is None:
                mask = None  # one new token sees everything: the official mask row is all zeros
            else:
                mask = causal_mask(length, past, batch, hidden.dtype, hidden.device)
                if attention_mask is not None:
                    mask = mask + padding_mask(attention_mask, hidden.dtype)
        else:
            if past:
                raise ValueError("a key/value cache needs causal=True")
            mask = padding_mask(attention_mask, hidden.dtype) if attention_mask is not None else None
        if cache is not None and not cache.layers:
            cache.layers = [LayerCache() for _ in self.encoder.layer]
        for index, layer in enumerate(self.encoder.layer):
            hidden = layer(hidden, mask, encoder_hidden_states, cache.layers[index] if cache is not None else None)
        if cache is not None:
            cache.length = past + length
        return hidden


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden_states)))


class BertLMPredictionHead(nn.Module):
    """Transform, then a vocabulary projection tied to the word embeddings plus its own bias."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias  # one tensor under both official names

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden_states))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)


class BertLMHeadModel(nn.Module):
    """The caption decoder (`text_decoder`): causal BERT with cross-attention and a tied LM head."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertOnlyMLMHead(config)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(
        self,
        input_ids: Tensor,
        encoder_hidden_states: Tensor | None,
        cache: DecoderCache | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Next-token logits [B, T, V] (or [B, V] for the last position with `last_only`)."""
        hidden = self.bert(input_ids, encoder_hidden_states=encoder_hidden_states, causal=True, cache=cache)
        if last_only:
            hidden = hidden[:, -1]
        return self.cls.predictions(hidden)

    def tie_weights(self) -> None:
        """Re-establish the ties (after something replaced a parameter)."""
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        self.cls.predictions.decoder.bias = self.cls.predictions.bias


class CaptionDecoder:
    """A `BertLMHeadModel` bound to fixed encoder states, as the generation loops see it.

    `logits(input_ids)` gives the next-token logits [N, V] for the full sequences `input_ids`
    [N, T]; `select(index)` keeps/reorders/duplicates rows (beams, batch expansion). With
    `use_cache` only the tokens not seen before go through the model; without it every call
    recomputes the whole prefix, exactly like the official code.
    """

    def __init__(self, model: BertLMHeadModel, encoder_hidden_states: Tensor, use_cache: bool = True) -> None:
        self.model = model
        self.encoder_hidden_states: Tensor | None = encoder_hidden_states
        self.cache: DecoderCache | None = DecoderCache() if use_cache else None

    def logits(self, input_ids: Tensor) -> Tensor:
        if self.cache is None:
            return self.model(input_ids, self.encoder_hidden_states, last_only=True)
        new_tokens = input_ids[:, self.cache.length :]
        logits = self.model(new_tokens, self.encoder_hidden_states, cache=self.cache, last_only=True)
        # the cache now holds every layer's cross-attention keys/values: the states are not read (nor
        # reordered per beam step) again
        self.encoder_hidden_states = None
        return logits

    def select(self, index: Tensor) -> None:
        if self.encoder_hidden_states is not None:
            self.encoder_hidden_states = self.encoder_hidden_states.index_select(0, index)
        if self.cache is not None and self.cache.layers:
            self.cache = self.cache.select(index)
