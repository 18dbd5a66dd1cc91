"""timm's Swin, configured and converted, against the official intermediate outputs stage by stage."""

from __future__ import annotations

import json

import pytest
import torch

# parameters on meta, not `with torch.device("meta")`: timm 1.0.20 and older call `.tolist()` on a linspace they build
from recognize.meta_init import parameters_on_meta
from recognize.taggers.checkpoint import DROPPED_BUFFERS
from recognize.taggers.swin import SWIN_L_384, SwinBackbone, SwinConfig, official_key, timm_key


@pytest.mark.parametrize("name", ["ram", "ram_plus"])
def test_stages_match_official_intermediates(name, request):
    folder = request.getfixturevalue(f"{name}_fixture")
    config = json.loads((folder / "config.json").read_text())
    swin = SwinBackbone(SwinConfig.from_official_json(config["swin_config_json"])).eval()
    state = torch.load(folder / "checkpoint.pth", weights_only=True)["model"]
    own = {timm_key(k[len("visual_encoder."):]): v for k, v in state.items()
           if k.startswith("visual_encoder.") and not any(b in k for b in DROPPED_BUFFERS)}
    swin.load_state_dict(own, strict=True)
    images = torch.load(folder / "inputs.pt", weights_only=True)["images"]
    expected = torch.load(folder / "intermediates.pt", weights_only=True)
    with torch.no_grad():
        got = swin.forward_stages(images)
        out = swin(images)
    for key, value in got.items():
        assert (value - expected[key]).abs().max() < 1e-5, key
    assert out.shape == expected["visual_encoder_out"].shape
    assert (out - expected["visual_encoder_out"]).abs().max() < 1e-5


def test_key_conversion_round_trips():
    for key in ["layers.0.downsample.reduction.weight", "layers.2.downsample.norm.bias", "layers.1.blocks.3.attn.qkv.weight",
                "norm.weight", "patch_embed.proj.weight"]:
        assert official_key(timm_key(key)) == key
    assert timm_key("layers.2.downsample.norm.bias") == "layers.3.downsample.norm.bias"


def test_released_window_clamp_in_the_last_stage():
    with parameters_on_meta():
        swin = SwinBackbone(SWIN_L_384)
    last = swin.layers[3].blocks
    assert [b.window_size for b in last] == [(12, 12), (12, 12)]
    assert [b.shift_size for b in last] == [(0, 0), (0, 0)]  # 12x12 map: full-map windows, no shift
    assert swin.layers[2].blocks[1].shift_size == (6, 6)
    assert SWIN_L_384.num_tokens == 145 and SWIN_L_384.vision_width == 1536
