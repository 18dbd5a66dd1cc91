"""`bench_jobs.counting_flops`: FLOPs of our exact CPU paths are counted as the plain torch modules compute
them. Without it `FlopCounterMode` counts oneDNN's linear (and SAM's fused attention) as zero, which would
inflate every "% of matmul" figure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from recognize import onednn_linear
from recognize.onednn_linear import use_onednn_linears

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_jobs import counting_flops  # noqa: E402


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 16)).eval()


def test_onednn_linears_count_as_nn_linear_and_the_switch_is_restored(monkeypatch):
    monkeypatch.setattr(onednn_linear, "ONEDNN", True)  # the default on AVX-512 CPUs; tested on any
    plain, fast = _mlp(), _mlp()
    use_onednn_linears(fast)
    x = torch.randn(8, 32)
    has_onednn = onednn_linear.available()  # its one-time probe runs a small addmm: not inside a counter
    with torch.inference_mode():
        with FlopCounterMode(display=False) as expected:
            plain(x)
        with counting_flops() as counted:
            fast(x)
        assert onednn_linear.ONEDNN is True
        with FlopCounterMode(display=False) as naive:
            fast(x)
    assert counted.get_total_flops() == expected.get_total_flops() == 2 * 8 * (32 * 64 + 64 * 16)
    if has_onednn:  # the reason for counting_flops: the op has no FLOP formula
        assert naive.get_total_flops() == 0


def test_sam_lean_blocks_count_as_segment_anything():
    lean_block = pytest.importorskip("recognize_sam.lean_block")
    from segment_anything.modeling.image_encoder import Block

    torch.manual_seed(0)
    block = Block(64, 4, use_rel_pos=True, window_size=14, input_size=(20, 20)).eval()
    x = torch.randn(1, 20, 20, 64)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as expected:
            lean_block.use_segment_anything(block)(x)
        lean_block.use_lean_blocks(block)
        with counting_flops() as counted:
            block(x)
    assert lean_block.LEAN is True
    assert counted.get_total_flops() == expected.get_total_flops() > 0


def test_tagger_lean_path_counts_as_timm_without_the_reused_work():
    """RAM with lean Swin blocks, fused decoder and reused label queries, warm (the image-independent
    results already kept): counted as timm and plain torch compute it, less the reused work, which is not
    executed (`relu(wordvec_proj(label_embed))` and the first layer's query projection of it);
    `reuse=False` counts it again, as the official code computes it every call."""
    from recognize.taggers import lean_swin, precomputed
    from recognize.taggers.lean_swin import use_lean_blocks
    from recognize.taggers.ram import CLIP_WIDTH, RamConfig, build_model
    from recognize.taggers.recognition_decoder import DecoderConfig
    from recognize.taggers.swin import SwinConfig

    torch.manual_seed(0)
    classes, hidden = 30, 64
    config = RamConfig("ram", SwinConfig(16, (1, 1, 2, 1), (1, 2, 4, 8), window_size=7, image_size=224),
                       DecoderConfig(hidden, 2, 4, 128, 512), num_classes=classes)
    plain, fast = (build_model(config).eval().requires_grad_(False) for _ in range(2))
    fast.load_state_dict(plain.state_dict())
    use_onednn_linears(fast)
    use_lean_blocks(fast)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as expected:
            plain(x)  # a first call: everything computed
        fast(x)  # keeps the image-independent queries
        with counting_flops() as executed:
            fast(x)
        with counting_flops(reuse=False) as recomputed:
            fast(x)
    assert lean_swin.LEAN is True and precomputed.PRECOMPUTE is True
    reused = 2 * classes * CLIP_WIDTH * hidden + 2 * classes * hidden * hidden
    assert recomputed.get_total_flops() == expected.get_total_flops() > 0
    assert executed.get_total_flops() == expected.get_total_flops() - reused


def test_grounding_dino_fusion_attention_counts_as_transformers_not_folded(monkeypatch):
    """The folded fusion attention executes fewer FLOPs (counted on plain torch GEMMs); `counting_flops`
    counts transformers' forward's and puts the fold back."""
    lean_layers = pytest.importorskip("recognize_grounding_dino.lean_layers")
    from transformers import GroundingDinoConfig
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        GroundingDinoBiMultiHeadAttention,
    )

    torch.manual_seed(0)
    plain = GroundingDinoBiMultiHeadAttention(GroundingDinoConfig()).eval()
    folded = GroundingDinoBiMultiHeadAttention(GroundingDinoConfig()).eval()
    folded.load_state_dict(plain.state_dict())
    lean_layers._mix(folded, lean_layers.LeanBiMultiHeadAttention)
    vision, text = torch.randn(1, 300, 256), torch.randn(1, 11, 256)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as expected:
            plain(vision, text)
        with counting_flops() as counted:
            folded(vision, text)
        assert lean_layers.FOLD_FUSION is True
        monkeypatch.setattr(onednn_linear, "ONEDNN", False)  # plain GEMMs, which the counter sees
        with FlopCounterMode(display=False) as executed:
            folded(vision, text)
    assert counted.get_total_flops() == expected.get_total_flops() > executed.get_total_flops() > 0
