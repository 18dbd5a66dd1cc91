"""`LeanSwinBlock` (and the decoder's fused adds) against timm's own forward: same function, fewer passes."""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock, window_partition

from recognize import onednn_linear
from recognize.onednn_linear import use_onednn_linears
from recognize.taggers import lean_swin, recognition_decoder
from recognize.taggers.lean_swin import LeanSwinBlock, use_lean_blocks, use_timm_blocks, window_order
from recognize.taggers.recognition_decoder import DecoderConfig, RecognitionDecoder
from recognize.taggers.swin import SwinBackbone, SwinConfig

#: shifted windows in stages 0-2, a 7x7 last stage (one full-map window, no shift)
SMALL = SwinConfig(16, (2, 2, 2, 2), (1, 2, 4, 8), window_size=7, image_size=224)


def _random(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return module.eval()


def _both(model: torch.nn.Module, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lean output, timm output) of the same model."""
    with torch.inference_mode():
        lean = model(*inputs)
        use_timm_blocks(model)
        try:
            plain = model(*inputs)
        finally:
            use_lean_blocks(model)
    return lean, plain


@pytest.mark.parametrize("shift", [(0, 0), (3, 3), (2, 5)])
def test_window_order_is_roll_then_window_partition(shift):
    H, W, window = 14, 21, (7, 7)
    grid = torch.arange(H * W).view(1, H, W, 1)
    rolled = torch.roll(grid, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    expected = window_partition(rolled, window).reshape(-1)
    assert torch.equal(window_order(H, W, window, shift), expected)


def test_lean_blocks_swap_in_and_out():
    model = SwinBackbone(SMALL)
    blocks = [m for m in model.modules() if isinstance(m, SwinTransformerBlock)]
    assert blocks and all(type(b) is SwinTransformerBlock for b in blocks)  # built directly: timm's forward
    keys = set(model.state_dict())
    use_lean_blocks(model)
    assert all(type(b) is LeanSwinBlock for b in blocks)
    use_timm_blocks(model)
    assert all(type(b) is SwinTransformerBlock for b in blocks)
    use_lean_blocks(model)
    assert all(type(b) is LeanSwinBlock for b in blocks) and set(model.state_dict()) == keys


@pytest.mark.parametrize("onednn", [False, True], ids=["torch-linear", "onednn-linear"])
def test_lean_backbone_equals_timm(onednn, monkeypatch):
    monkeypatch.setattr(onednn_linear, "ONEDNN", onednn)
    model = use_lean_blocks(_random(SwinBackbone(SMALL)))
    use_onednn_linears(model)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    lean, plain = _both(model, images)
    scale = plain.abs().max().item()
    assert (lean - plain).abs().max().item() <= 1e-5 * scale
    with torch.inference_mode():  # a batch of one gives what the same image gives in a batch
        single = model(images[1:])
    assert (single - lean[1:]).abs().max().item() <= 1e-5 * scale


def test_lean_block_switch_and_fallbacks_run_timm_exactly(monkeypatch):
    block = _random(SwinTransformerBlock(16, (14, 14), num_heads=2, window_size=7, shift_size=3))
    x = torch.randn(2, 14, 14, 16, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        plain = block(x)
        block.__class__ = LeanSwinBlock
        lean = block(x)
        assert (lean - plain).abs().max().item() <= 1e-5 * plain.abs().max().item()
        monkeypatch.setattr(lean_swin, "LEAN", False)
        assert torch.equal(block(x), plain)
        monkeypatch.setattr(lean_swin, "LEAN", True)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # fast modes keep timm's path
            assert block._lean_applies(x) is False
    # a map that is not a multiple of the window needs padding: timm's forward, unchanged
    padded = _random(SwinTransformerBlock(16, (10, 10), num_heads=2, window_size=7, shift_size=3))
    y = torch.randn(1, 10, 10, 16)
    with torch.inference_mode():
        expected = padded(y)
        padded.__class__ = LeanSwinBlock
        assert not padded._lean_applies(y)
        assert torch.equal(padded(y), expected)


@pytest.mark.parametrize("onednn", [True, False])
def test_decoder_fused_path_equals_plain(onednn, monkeypatch):
    """Fused adds/GELU and attention as oneDNN GEMMs (Linears on oneDNN, the default on AVX-512 CPUs)
    against the plain forward; without oneDNN (AVX2 CPUs) the fused path keeps SDPA."""
    monkeypatch.setattr(onednn_linear, "ONEDNN", onednn)
    decoder = _random(RecognitionDecoder(DecoderConfig(hidden_size=64, num_layers=2, num_heads=4,
                                                       intermediate_size=128, encoder_width=32)))
    generator = torch.Generator().manual_seed(3)
    shared, per_image = torch.randn(50, 64, generator=generator), torch.randn(3, 50, 64, generator=generator)
    image = torch.randn(3, 10, 32, generator=generator)
    calls = []
    from recognize.taggers.recognition_decoder import DecoderLayer

    original = DecoderLayer._attention_by_gemm
    monkeypatch.setattr(DecoderLayer, "_attention_by_gemm", lambda self, *a: calls.append(1) or original(self, *a))
    with torch.inference_mode():
        plain = [decoder(queries, image) for queries in (shared, per_image)]  # plain nn.Linear: plain forward
        use_onednn_linears(decoder)
        fused = [decoder(queries, image) for queries in (shared, per_image)]
        monkeypatch.setattr(recognition_decoder, "FUSED", False)
        switched_off = [decoder(queries, image) for queries in (shared, per_image)]
    for expected, got, off in zip(plain, fused, switched_off):
        assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
        assert (off - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert len(calls) == (2 * 2 if onednn else 0)  # two layers, two query kinds: the GEMM attention ran


def test_cached_bias_follows_the_table_and_gradients_use_timm():
    block = _random(SwinTransformerBlock(16, (14, 14), num_heads=2, window_size=7, shift_size=0))
    block.__class__ = LeanSwinBlock
    x = torch.randn(1, 14, 14, 16, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        before = block(x)
    state = {k: v.clone() for k, v in block.state_dict().items()}
    table = state["attn.relative_position_bias_table"]
    table += torch.randn(table.shape, generator=torch.Generator().manual_seed(5))
    block.load_state_dict(state)  # an in-place copy into the same storage: the cache must notice
    with torch.inference_mode():
        after = block(x)
        use_timm_blocks(block)
        expected = block(x)
        use_lean_blocks(block)
    assert not torch.allclose(after, before)
    assert (after - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    # autograd through the block (e.g. a saliency map) takes timm's path, bias table included
    block.requires_grad_(True)
    assert not block._lean_applies(x)
    block(x).sum().backward()
    assert block.attn.relative_position_bias_table.grad is not None


def test_decoder_under_autocast_keeps_the_plain_path():
    """Fast modes (bf16 autocast) keep the computation their fidelity was measured on."""
    plain = _random(RecognitionDecoder(DecoderConfig(hidden_size=64, num_layers=2, num_heads=4,
                                                     intermediate_size=128, encoder_width=32)))
    fast = _random(RecognitionDecoder(DecoderConfig(hidden_size=64, num_layers=2, num_heads=4,
                                                    intermediate_size=128, encoder_width=32)))
    use_onednn_linears(fast)
    queries, image = torch.randn(2, 50, 64), torch.randn(2, 10, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fast(queries, image), plain(queries, image))


def test_kept_bias_is_one_per_dtype():
    block = _random(SwinTransformerBlock(16, (14, 14), num_heads=2, window_size=7, shift_size=3))
    block.__class__ = LeanSwinBlock
    with torch.inference_mode():
        first = block._bias(torch.float32)
        wide = block._bias(torch.float64)
        assert first.dtype == torch.float32 and wide.dtype == torch.float64
        assert block._bias(torch.float32) is first


@pytest.mark.parametrize("shift", [0, 3])
def test_an_empty_batch_gives_an_empty_output(shift):
    """(timm's own forward raises on it: its head split reshapes 0 elements with a -1.)"""
    block = _random(SwinTransformerBlock(16, (14, 14), num_heads=2, window_size=7, shift_size=shift))
    block.__class__ = LeanSwinBlock
    with torch.inference_mode():
        out = block(torch.randn(0, 14, 14, 16))
    assert out.shape == (0, 14, 14, 16)
