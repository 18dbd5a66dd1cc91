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


def test_onednn_linears_count_as_nn_linear_and_the_switch_is_restored():
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
