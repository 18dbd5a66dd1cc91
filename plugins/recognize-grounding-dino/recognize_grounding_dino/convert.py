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

import torch

#: Official keys the detector never reads.
IGNORED = re.compile(r"^bert\.(pooler\..*|embeddings\.position_ids|embeddings\.token_type_ids)$")

_SWIN = "model.backbone.conv_encoder.model."
_ENC = r"model.encoder.layers.\1."
_DEC = r"model.decoder.layers.\1."
_BLOCK_IN = r"^backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\."
_BLOCK = _SWIN + r"encoder.layers.\1.blocks.\2."
_FUSE = r"^transformer\.encoder\.fusion_layers\.(\d+)\."

# (official pattern, transformers replacement); first match wins; `{qkv}` marks a fused tensor.
_RULES: list[tuple[str, str]] = [
    # Swin backbone
    (r"^backbone\.0\.patch_embed\.proj\.", _SWIN + "embeddings.patch_embeddings.projection."),
    (r"^backbone\.0\.patch_embed\.norm\.", _SWIN + "embeddings.norm."),
    (_BLOCK_IN + r"norm1\.", _BLOCK + "layernorm_before."),
    (_BLOCK_IN + r"norm2\.", _BLOCK + "layernorm_after."),
    (_BLOCK_IN + r"attn\.qkv\.", _BLOCK + "attention.self.{qkv}."),
    (_BLOCK_IN + r"attn\.proj\.", _BLOCK + "attention.output.dense."),
    (_BLOCK_IN + r"attn\.", _BLOCK + "attention.self."),
    (_BLOCK_IN + r"mlp\.fc1\.", _BLOCK + "intermediate.dense."),
    (_BLOCK_IN + r"mlp\.fc2\.", _BLOCK + "output.dense."),
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
    (r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.", _ENC + "deformable_layer.self_attn."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm1\.", _ENC + "deformable_layer.self_attn_layer_norm."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear1\.", _ENC + "deformable_layer.fc1."),
    (r"^transformer\.encoder\.layers\.(\d+)\.linear2\.", _ENC + "deformable_layer.fc2."),
    (r"^transformer\.encoder\.layers\.(\d+)\.norm2\.", _ENC + "deformable_layer.final_layer_norm."),
    # encoder: text enhancer layers
    (r"^transformer\.encoder\.text_layers\.(\d+)\.self_attn\.in_proj_", _ENC + "text_enhancer_layer.self_attn.{qkv}."),
    (r"^transformer\.encoder\.text_layers\.(\d+)\.self_attn\.out_proj\.", _ENC + "text_enhancer_layer.self_attn.out_proj."),
    (r"^transformer\.encoder\.text_layers\.(\d+)\.linear1\.", _ENC + "text_enhancer_layer.fc1."),
    (r"^transformer\.encoder\.text_layers\.(\d+)\.linear2\.", _ENC + "text_enhancer_layer.fc2."),
    (r"^transformer\.encoder\.text_layers\.(\d+)\.norm1\.", _ENC + "text_enhancer_layer.layer_norm_before."),
    (r"^transformer\.encoder\.text_layers\.(\d+)\.norm2\.", _ENC + "text_enhancer_layer.layer_norm_after."),
    # encoder: image-text fusion layers
    (_FUSE + r"gamma_v$", _ENC + "fusion_layer.vision_param"),
    (_FUSE + r"gamma_l$", _ENC + "fusion_layer.text_param"),
    (_FUSE + r"layer_norm_v\.", _ENC + "fusion_layer.layer_norm_vision."),
    (_FUSE + r"layer_norm_l\.", _ENC + "fusion_layer.layer_norm_text."),
    (_FUSE + r"attn\.v_proj\.", _ENC + "fusion_layer.attn.vision_proj."),
    (_FUSE + r"attn\.l_proj\.", _ENC + "fusion_layer.attn.text_proj."),
    (_FUSE + r"attn\.values_v_proj\.", _ENC + "fusion_layer.attn.values_vision_proj."),
    (_FUSE + r"attn\.values_l_proj\.", _ENC + "fusion_layer.attn.values_text_proj."),
    (_FUSE + r"attn\.out_v_proj\.", _ENC + "fusion_layer.attn.out_vision_proj."),
    (_FUSE + r"attn\.out_l_proj\.", _ENC + "fusion_layer.attn.out_text_proj."),
    # decoder layers
    (r"^transformer\.decoder\.layers\.(\d+)\.cross_attn\.", _DEC + "encoder_attn."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm1\.", _DEC + "encoder_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.in_proj_", _DEC + "encoder_attn_text.{qkv}."),
    (r"^transformer\.decoder\.layers\.(\d+)\.ca_text\.out_proj\.", _DEC + "encoder_attn_text.out_proj."),
    (r"^transformer\.decoder\.layers\.(\d+)\.catext_norm\.", _DEC + "encoder_attn_text_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.in_proj_", _DEC + "self_attn.{qkv}."),
    (r"^transformer\.decoder\.layers\.(\d+)\.self_attn\.out_proj\.", _DEC + "self_attn.out_proj."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm2\.", _DEC + "self_attn_layer_norm."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear1\.", _DEC + "fc1."),
    (r"^transformer\.decoder\.layers\.(\d+)\.linear2\.", _DEC + "fc2."),
    (r"^transformer\.decoder\.layers\.(\d+)\.norm3\.", _DEC + "final_layer_norm."),
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
