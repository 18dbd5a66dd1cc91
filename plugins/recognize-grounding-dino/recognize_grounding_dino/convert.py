"""Official Grounding DINO checkpoint keys -> transformers' `GroundingDinoForObjectDetection` keys.

The official release (`groundingdino_swint_ogc.pth`, `groundingdino_swinb_cogcoor.pth`) stores
the IDEA-Research module tree. transformers holds the same tensors under other names; three
kinds of official tensors are also split: Swin's fused `qkv` and `nn.MultiheadAttention`'s
`in_proj_*` become separate query/key/value tensors. Nothing is dropped except what the model
never reads: BERT's pooler and the `position_ids` / `token_type_ids` buffers (an `arange` and
zeros that transformers rebuilds).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

#: Official keys the detector never reads.
IGNORED = re.compile(r"^bert\.(pooler\..*|embeddings\.position_ids|embeddings\.token_type_ids)$")

_SWIN = "model.backbone.conv_encoder.model."


def _under(official: str, ours: str, suffixes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Rules for one module repeated per layer: the shared prefixes are written once."""
    return [(official + old, ours + new) for old, new in suffixes]


# (official pattern, transformers replacement); first match wins; `{qkv}` marks a fused tensor.
_RULES: list[tuple[str, str]] = [
    # Swin backbone
    (r"^backbone\.0\.patch_embed\.proj\.", _SWIN + "embeddings.patch_embeddings.projection."),
    (r"^backbone\.0\.patch_embed\.norm\.", _SWIN + "embeddings.norm."),
    *_under(r"^backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.", _SWIN + r"encoder.layers.\1.blocks.\2.", [
        (r"norm1\.", "layernorm_before."),
        (r"norm2\.", "layernorm_after."),
        (r"attn\.qkv\.", "attention.self.{qkv}."),
        (r"attn\.proj\.", "attention.output.dense."),
        (r"attn\.", "attention.self."),
        (r"mlp\.fc1\.", "intermediate.dense."),
        (r"mlp\.fc2\.", "output.dense."),
    ]),
    (r"^backbone\.0\.layers\.(\d+)\.downsample\.", _SWIN + r"encoder.layers.\1.downsample."),
    # output norms: official norm{i} normalises Swin stage i (0-based), transformers names it stage{i+1}
    (r"^backbone\.0\.norm(\d)\.", "STAGE_NORM"),
    # text side
    (r"^bert\.", "model.text_backbone."),
    (r"^feat_map\.", "model.text_projection."),
    (r"^input_proj\.", "model.input_proj_vision."),
    # transformer: top level
    (r"^transformer\.level_embed$", "model.level_embed"),
    (r"^transformer\.tgt_embed\.", "model.query_position_embeddings."),
    (r"^transformer\.enc_output\.", "model.enc_output."),
    (r"^transformer\.enc_output_norm\.", "model.enc_output_norm."),
    (r"^transformer\.enc_out_bbox_embed\.", "model.encoder_output_bbox_embed."),
    # encoder: deformable image layers
    *_under(r"^transformer\.encoder\.layers\.(\d+)\.", r"model.encoder.layers.\1.deformable_layer.", [
        (r"self_attn\.", "self_attn."),
        (r"norm1\.", "self_attn_layer_norm."),
        (r"linear1\.", "fc1."),
        (r"linear2\.", "fc2."),
        (r"norm2\.", "final_layer_norm."),
    ]),
    # encoder: text enhancer layers
    *_under(r"^transformer\.encoder\.text_layers\.(\d+)\.", r"model.encoder.layers.\1.text_enhancer_layer.", [
        (r"self_attn\.in_proj_", "self_attn.{qkv}."),
        (r"self_attn\.out_proj\.", "self_attn.out_proj."),
        (r"linear1\.", "fc1."),
        (r"linear2\.", "fc2."),
        (r"norm1\.", "layer_norm_before."),
        (r"norm2\.", "layer_norm_after."),
    ]),
    # encoder: image-text fusion layers
    *_under(r"^transformer\.encoder\.fusion_layers\.(\d+)\.", r"model.encoder.layers.\1.fusion_layer.", [
        (r"gamma_v$", "vision_param"),
        (r"gamma_l$", "text_param"),
        (r"layer_norm_v\.", "layer_norm_vision."),
        (r"layer_norm_l\.", "layer_norm_text."),
        (r"attn\.v_proj\.", "attn.vision_proj."),
        (r"attn\.l_proj\.", "attn.text_proj."),
        (r"attn\.values_v_proj\.", "attn.values_vision_proj."),
        (r"attn\.values_l_proj\.", "attn.values_text_proj."),
        (r"attn\.out_v_proj\.", "attn.out_vision_proj."),
        (r"attn\.out_l_proj\.", "attn.out_text_proj."),
    ]),
    # decoder layers
    *_under(r"^transformer\.decoder\.layers\.(\d+)\.", r"model.decoder.layers.\1.", [
        (r"cross_attn\.", "encoder_attn."),
        (r"norm1\.", "encoder_attn_layer_norm."),
        (r"ca_text\.in_proj_", "encoder_attn_text.{qkv}."),
        (r"ca_text\.out_proj\.", "encoder_attn_text.out_proj."),
        (r"catext_norm\.", "encoder_attn_text_layer_norm."),
        (r"self_attn\.in_proj_", "self_attn.{qkv}."),
        (r"self_attn\.out_proj\.", "self_attn.out_proj."),
        (r"norm2\.", "self_attn_layer_norm."),
        (r"linear1\.", "fc1."),
        (r"linear2\.", "fc2."),
        (r"norm3\.", "final_layer_norm."),
    ]),
    (r"^transformer\.decoder\.norm\.", "model.decoder.layer_norm."),
    (r"^transformer\.decoder\.ref_point_head\.", "model.decoder.reference_points_head."),
    (r"^transformer\.decoder\.bbox_embed\.", "model.decoder.bbox_embed."),
    # prediction heads (the class head is a parameter-free dot product)
    (r"^bbox_embed\.", "bbox_embed."),
]
_COMPILED = [(re.compile(pattern), replacement) for pattern, replacement in _RULES]


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix a DistributedDataParallel save leaves on every key."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def is_official(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True for the IDEA-Research key layout, False for transformers' layout."""
    return any(k.startswith(("transformer.", "backbone.0.")) for k in state_dict)


def official_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename (and split) an official state dict; returns it and the official keys no rule knows."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in strip_prefix(state_dict).items():
        if IGNORED.match(key):
            continue
        for pattern, replacement in _COMPILED:
            match = pattern.match(key)
            if match is None:
                continue
            rest = key[match.end():]
            if replacement == "STAGE_NORM":
                new = f"{_SWIN}hidden_states_norms.stage{int(match.group(1)) + 1}." + rest
            else:
                new = match.expand(replacement) + rest
            if "{qkv}" in new:
                # fused [q; k; v] along dim 0 (`in_proj_weight` -> rest "weight")
                for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[new.replace("{qkv}", name)] = part.contiguous()
            else:
                out[new] = value
            break
        else:
            unknown.append(key)
    return out, unknown



# transformers 5.x renamed SwinBackbone's insides: `embeddings` / `encoder` moved into `swin.`, and the
# attention and MLP projections got new names. Each pair is (4.x name part, 5.x name part).
_SWIN_NESTED = _SWIN + "swin."
_SWIN_BODY = re.compile(r"^" + re.escape(_SWIN) + r"(embeddings|encoder)\.")
_SWIN_RENAMES = [
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
]
#: 5.x SwinModel carries a final `layernorm` the backbone never applies (it normalises the stage
#: outputs with `hidden_states_norms`): no checkpoint has it, the model keeps its own values
_SWIN_UNREAD = re.compile(r"^" + re.escape(_SWIN_NESTED) + r"layernorm\.")


def _newer_swin(key: str) -> str:
    if _SWIN_BODY.match(key):
        key = _SWIN_NESTED + key[len(_SWIN):]
    if key.startswith(_SWIN_NESTED + "encoder."):
        for old, new in _SWIN_RENAMES:
            key = key.replace(old, new, 1) if old in key else key
    return key


def _older_swin(key: str) -> str:
    if key.startswith(_SWIN_NESTED):
        key = _SWIN + key[len(_SWIN_NESTED):]
    if key.startswith(_SWIN + "encoder."):
        for old, new in _SWIN_RENAMES:
            key = key.replace(new, old, 1) if new in key else key
    return key


def align_backbone_layout(state_dict: Mapping[str, torch.Tensor], model_state: Mapping[str, Any]
                          ) -> dict[str, torch.Tensor]:
    """Name the Swin backbone's tensors the way the installed transformers does.

    `official_to_transformers` writes transformers 4.x names; transformers 5.x nests SwinBackbone's
    body in `swin.` and renames its projections. The tensors are the same, so a state dict (converted
    from the official release, or saved by either version) is renamed to the layout of the model it
    is about to be loaded into. Two buffers and parameters the forward pass never reads follow the
    model, not the file: `relative_position_index` (an index computed from the window size, a buffer
    in 4.x only) and 5.x's unused final Swin `layernorm` (taken from `model_state`).
    """
    aligned: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key not in model_state:
            for candidate in (_newer_swin(key), _older_swin(key)):
                if candidate in model_state:
                    key = candidate
                    break
            else:
                if key.startswith(_SWIN) and key.endswith("relative_position_index"):
                    continue
        aligned[key] = value
    for key, value in model_state.items():
        if key not in aligned and _SWIN_UNREAD.match(key):
            aligned[key] = value
    return aligned
