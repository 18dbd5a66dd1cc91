"""Official checkpoint keys -> transformers keys (recognize_grounding_dino.convert).

The released checkpoints are not on this machine, so the full-size key sets come from the
official code itself: rf-groundingdino builds GroundingDINO from its shipped SwinT_OGC / SwinB
configs, exactly as the official loader does before `load_state_dict`, in its own environment
(oracle_env.py: it needs transformers 4.x). Its state dict has the released checkpoints' keys and shapes.
"""

from __future__ import annotations

import json

import pytest
import torch

from recognize_grounding_dino.convert import IGNORED, align_backbone_layout, official_to_transformers
from recognize_grounding_dino.model import PRESETS, build_config, build_model

CONFIGS = {"swint_ogc": "GroundingDINO_SwinT_OGC.py", "swinb": "GroundingDINO_SwinB_cfg.py"}


@pytest.fixture(scope="module")
def official_shapes(vocab, tmp_path_factory) -> dict[str, dict[str, list[int]]]:
    """config file -> the official state dict's names and shapes, from the official code in its own env."""
    from oracle_env import run_official

    found = run_official({"task": "full_size_keys", "vocab": str(vocab), "configs": list(CONFIGS.values())},
                         tmp_path_factory.mktemp("keys"))
    return {config: dict(zip(found[f"{config}:names"].tolist(), json.loads(str(found[f"{config}:shapes"]))))
            for config in CONFIGS.values()}


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("preset", list(CONFIGS))
def test_full_size_official_keys_load_strictly(preset, official_shapes):
    # values do not matter, only names and shapes: uninitialised tensors cost no compute
    official = {f"module.{k}": torch.empty(shape) for k, shape in official_shapes[CONFIGS[preset]].items()}
    # what a checkpoint saved with an older transformers (and DDP) also carries
    official["module.bert.embeddings.position_ids"] = torch.arange(512)[None]
    converted, unknown = official_to_transformers(official)
    assert unknown == []
    model = build_model(build_config(preset), init_weights=False)
    expected = model.state_dict()
    converted = align_backbone_layout(converted, expected)  # the installed transformers' Swin layout
    assert sorted(converted) == sorted(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
    model.load_state_dict(converted, strict=True)
    assert PRESETS[preset]["backbone_config"]["window_size"] == (7 if preset == "swint_ogc" else 12)


def test_fused_projections_split_in_query_key_value_order():
    fused = torch.arange(12.0).reshape(6, 2)
    bias = torch.arange(6.0)
    converted, unknown = official_to_transformers({
        "backbone.0.layers.1.blocks.0.attn.qkv.weight": fused,
        "transformer.decoder.layers.3.ca_text.in_proj_bias": bias,
        "transformer.encoder.text_layers.0.self_attn.in_proj_weight": fused,
        "bert.pooler.dense.weight": torch.zeros(2, 2),
        "some.unknown.key": torch.zeros(1),
    })
    swin = "model.backbone.conv_encoder.model.encoder.layers.1.blocks.0.attention.self."
    assert torch.equal(converted[swin + "query.weight"], fused[0:2])
    assert torch.equal(converted[swin + "key.weight"], fused[2:4])
    assert torch.equal(converted[swin + "value.weight"], fused[4:6])
    assert torch.equal(converted["model.decoder.layers.3.encoder_attn_text.value.bias"], bias[4:6])
    assert "model.encoder.layers.0.text_enhancer_layer.self_attn.key.weight" in converted
    assert unknown == ["some.unknown.key"]  # reported, never silently skipped
    assert IGNORED.match("bert.pooler.dense.weight") and not any("pooler" in k for k in converted)


def test_the_backbone_layout_follows_the_model_either_way():
    """4.x names (what official_to_transformers writes) <-> 5.x names (nested `swin.`, new projections)."""
    swin = "model.backbone.conv_encoder.model."
    older = {swin + "embeddings.norm.weight": torch.ones(1),
             swin + "encoder.layers.0.blocks.0.attention.self.query.weight": torch.ones(1),
             swin + "encoder.layers.0.blocks.0.attention.self.relative_position_bias_table": torch.ones(1),
             swin + "encoder.layers.0.blocks.0.attention.output.dense.bias": torch.ones(1),
             swin + "encoder.layers.0.blocks.0.output.dense.weight": torch.ones(1),
             swin + "hidden_states_norms.stage2.weight": torch.ones(1),
             "model.text_backbone.encoder.layer.0.output.dense.weight": torch.ones(1)}
    newer_model = {swin + "swin.embeddings.norm.weight": 0,
                   swin + "swin.encoder.layers.0.blocks.0.attention.q_proj.weight": 0,
                   swin + "swin.encoder.layers.0.blocks.0.attention.relative_position_bias."
                          "relative_position_bias_table": 0,
                   swin + "swin.encoder.layers.0.blocks.0.attention.o_proj.bias": 0,
                   swin + "swin.encoder.layers.0.blocks.0.mlp.fc2.weight": 0,
                   swin + "hidden_states_norms.stage2.weight": 0,
                   swin + "swin.layernorm.weight": torch.zeros(1),
                   "model.text_backbone.encoder.layer.0.output.dense.weight": 0}
    newer = align_backbone_layout({**older, swin + "encoder.layers.0.blocks.0.attention.self.relative_position_index":
                                   torch.ones(1)}, newer_model)
    assert sorted(newer) == sorted(newer_model)  # BERT's `output.dense` is not Swin's: left alone
    assert torch.equal(newer[swin + "swin.layernorm.weight"], torch.zeros(1))  # the model's own, never read
    back = align_backbone_layout({k: v for k, v in newer.items() if "layernorm" not in k}, older)
    assert back == older
