"""Official checkpoint keys -> transformers keys (recognize_grounding_dino.convert).

The released checkpoints are not on this machine, so the full-size key sets come from the
official code itself: rf-groundingdino builds GroundingDINO from its shipped SwinT_OGC / SwinB
configs, exactly as the official loader does before `load_state_dict`. Its state dict has the
released checkpoints' keys and shapes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recognize_grounding_dino.convert import IGNORED, official_to_transformers
from recognize_grounding_dino.model import PRESETS, build_config, build_model

pytest.importorskip("groundingdino", reason="rf-groundingdino (the official code) is a test-only dependency")


def _official_state_dict(config_file: str, tokenizer, monkeypatch) -> dict[str, torch.Tensor]:
    from transformers import BertConfig, BertModel
    from transformers.modeling_utils import no_init_weights

    import groundingdino
    import groundingdino.models.GroundingDINO.groundingdino as official
    from groundingdino.models import build_model as build_official
    from groundingdino.util.slconfig import SLConfig

    monkeypatch.setattr(official.get_tokenlizer, "get_tokenlizer", lambda _name: tokenizer)
    # bert-base-uncased is BertConfig's default; the official code would download it here
    monkeypatch.setattr(official.get_tokenlizer, "get_pretrained_language_model", lambda _name: BertModel(BertConfig()))
    args = SLConfig.fromfile(str(Path(groundingdino.__file__).parent / "config" / config_file))
    with no_init_weights():  # only the names and shapes matter
        model = build_official(args)
    return model.state_dict()


@pytest.mark.parametrize("preset, config_file", [("swint_ogc", "GroundingDINO_SwinT_OGC.py"),
                                                 ("swinb", "GroundingDINO_SwinB_cfg.py")])
def test_full_size_official_keys_load_strictly(preset, config_file, tokenizer, monkeypatch):
    official = _official_state_dict(config_file, tokenizer, monkeypatch)
    # what a checkpoint saved with an older transformers (and DDP) also carries
    official = {f"module.{k}": v for k, v in official.items()}
    official["module.bert.embeddings.position_ids"] = torch.arange(512)[None]
    converted, unknown = official_to_transformers(official)
    assert unknown == []
    model = build_model(build_config(preset), init_weights=False)
    expected = model.state_dict()
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
