"""`lean_layers`: the leaner forwards give transformers' own outputs for the same weights."""

from __future__ import annotations

import copy

import pytest
import torch
from gd_support import randomize_
from recognize_grounding_dino.lean_layers import (
    DeformableSampling,
    GatherSampling,
    lean,
)
from recognize_grounding_dino.model import build_config, build_model


@pytest.fixture(autouse=True)
def onednn_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `onednn=True` cases test oneDNN's fused products (the default on AVX-512 CPUs): on, whatever
    this CPU's default (`onednn_linear.onednn_by_default`); the other cases use plain `nn.Linear`s."""
    from recognize import onednn_linear

    monkeypatch.setattr(onednn_linear, "ONEDNN", True)


@pytest.fixture(scope="module")
def models(tiny):
    """Our model (lean, gather sampling), the same with grid_sample sampling (the lean path before
    `GatherSampling`), and a plain transformers model, all with the same weights."""
    from transformers import GroundingDinoForObjectDetection

    ours = randomize_(build_model(build_config("swint_ogc", tiny)), seed=0)
    grid = lean(build_model(build_config("swint_ogc", tiny)), sampling="grid_sample")
    grid.load_state_dict(ours.state_dict())
    plain = GroundingDinoForObjectDetection(build_config("swint_ogc", tiny)).eval()
    plain.load_state_dict(ours.state_dict())
    return ours, grid, plain


@pytest.fixture(scope="module")
def pair(models):
    """Our model with grid_sample sampling and the plain transformers model (bit for bit)."""
    return models[1], models[2]


def _run(model, pixels, ids, pixel_mask=None, attention_mask=None):
    with torch.inference_mode():
        return model(pixel_values=pixels, input_ids=ids, pixel_mask=pixel_mask,
                     attention_mask=torch.ones_like(ids) if attention_mask is None else attention_mask)


def test_the_leaner_forwards_are_in_place(models):
    ours, grid, plain = models
    kinds = {type(m).__name__ for m in ours.modules()}
    assert {"LeanSwinAttention", "LeanGroundingDinoBiMultiHeadAttention", "GatherSampling"} <= kinds
    assert "DeformableSampling" not in kinds
    assert "DeformableSampling" in {type(m).__name__ for m in grid.modules()}
    assert not any(isinstance(m, (DeformableSampling, GatherSampling)) for m in plain.modules())
    assert list(ours.state_dict()) == list(plain.state_dict())  # checkpoints load as before


@pytest.mark.parametrize("padded", [False, True])
def test_outputs_equal_transformers(pair, tokenizer, padded):
    """Within float32 rounding, not bit for bit: the Swin attention's fused q/k/v GEMM rounds the last
    bits differently from transformers' three GEMMs (~1e-6 here), and the folded fusion attention sums in
    another order; with padded pixels and tokens the masks are used. The layers that are bit for bit are checked one by one below."""
    ours, plain = pair
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 128, 200)
    captions = ["person . dog . traffic light .", "red car ."]
    tokens = tokenizer(captions, padding="longest", return_tensors="pt")
    pixel_mask = attention_mask = None
    if padded:
        pixel_mask = torch.ones(2, 128, 200, dtype=torch.long)
        pixel_mask[1, :, 150:] = 0
        attention_mask = tokens["attention_mask"]
        assert not attention_mask.all()
    else:
        tokens["input_ids"] = tokens["input_ids"][:1].expand(2, -1)
    a = _run(ours, pixels, tokens["input_ids"], pixel_mask, attention_mask)
    b = _run(plain, pixels, tokens["input_ids"], pixel_mask, attention_mask)
    finite = torch.isfinite(b.logits)
    assert torch.equal(finite, torch.isfinite(a.logits))
    torch.testing.assert_close(a.logits[finite], b.logits[finite], atol=1e-5, rtol=0)
    torch.testing.assert_close(a.pred_boxes, b.pred_boxes, atol=1e-6, rtol=0)


def test_a_changed_weight_is_used(pair, tokenizer):
    """The fused q/k/v weight is cached: changing one projection in place must reach the output."""
    ours, _plain = pair
    ids = tokenizer(["dog ."], return_tensors="pt")["input_ids"]
    pixels = torch.randn(1, 3, 96, 96)
    before = _run(ours, pixels, ids).pred_boxes
    swin_q = next(p for n, p in ours.named_parameters() if n.endswith("blocks.0.attention.q_proj.weight"))
    original = swin_q.detach().clone()
    try:
        with torch.no_grad():
            swin_q.mul_(3.0)
        assert not torch.equal(_run(ours, pixels, ids).pred_boxes, before)
    finally:
        with torch.no_grad():
            swin_q.copy_(original)
    torch.testing.assert_close(_run(ours, pixels, ids).pred_boxes, before, atol=0, rtol=0)


def test_the_fused_swin_qkv_weight_is_packed_once_under_inference_mode(pair, tokenizer, monkeypatch):
    """The detector's forward runs under inference mode, where the fused q/k/v weight is made: it must
    still be a tensor with a version counter (an inference tensor has none, and is not packed), so its
    oneDNN packed copy is made once and reused."""
    from recognize import onednn_linear

    if not onednn_linear.available("packed"):
        pytest.skip("this torch build cannot prepack a oneDNN linear weight")
    cache: dict = {}
    monkeypatch.setattr(onednn_linear, "ONEDNN", True)  # the default on AVX-512 CPUs; tested on any
    monkeypatch.setattr(onednn_linear, "_packed", cache)
    monkeypatch.setattr(onednn_linear, "PACKED", True)
    monkeypatch.setattr(onednn_linear, "_suspended", False)  # another test's chain may have left packing suspended
    ours, _plain = pair
    ids = tokenizer(["dog ."], return_tensors="pt")["input_ids"]
    pixels = torch.randn(1, 3, 96, 96)
    first = _run(ours, pixels, ids).pred_boxes
    attention = next(m for m in ours.modules() if type(m).__name__ == "LeanSwinAttention")
    _key, weight, _bias = attention.__dict__["_qkv"]
    assert not weight.is_inference() and id(weight) in cache
    packed = cache[id(weight)].tensor
    assert torch.equal(_run(ours, pixels, ids).pred_boxes, first)
    assert attention.__dict__["_qkv"][1] is weight and cache[id(weight)].tensor is packed


def test_lean_is_idempotent(models):
    ours = models[0]
    kinds = [type(m) for m in ours.modules()]
    lean(ours)
    assert [type(m) for m in ours.modules()] == kinds


@pytest.mark.parametrize("padded", [False, True])
def test_gather_sampling_gives_the_grid_sample_outputs(models, tokenizer, padded):
    """The whole model with the gather sampling against the same model with grid_sample: within
    float32 rounding of the sampling coordinates (the two read the same value rows)."""
    ours, grid, _plain = models
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 160, 224)
    tokens = tokenizer(["person . dog . traffic light .", "red car ."], padding="longest", return_tensors="pt")
    pixel_mask = torch.ones(2, 160, 224, dtype=torch.long)
    attention_mask = tokens["attention_mask"]
    if padded:
        pixel_mask[1, :, 150:] = 0
    a = _run(ours, pixels, tokens["input_ids"], pixel_mask, attention_mask)
    b = _run(grid, pixels, tokens["input_ids"], pixel_mask, attention_mask)
    finite = torch.isfinite(b.logits)
    assert torch.equal(finite, torch.isfinite(a.logits))
    torch.testing.assert_close(a.logits[finite], b.logits[finite], atol=1e-4, rtol=0)
    torch.testing.assert_close(a.pred_boxes, b.pred_boxes, atol=1e-5, rtol=0)


def _sampling_inputs(shapes, batch=2, queries=37, heads=3, dims=5, points=3, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(batch, tokens, heads, dims, generator=generator, dtype=dtype)
    # locations mostly around the map, some just outside [0, 1], some far off
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator, dtype=dtype) * 1.6 - 0.3
    locations[:, :3] *= 40
    locations[:, 3, :, :, 0, 0] = -0.5 / torch.tensor([w for _, w in shapes], dtype=dtype)  # a corner exactly at -1
    logits = torch.randn(batch, queries, heads, len(shapes) * points, generator=generator, dtype=dtype)
    weights = logits.softmax(-1).view(batch, queries, heads, len(shapes), points)
    spatial = torch.tensor(shapes)
    starts = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])
    return value, spatial, list(shapes), starts, locations, weights, 64


@pytest.mark.parametrize("shapes", [[(7, 9)], [(13, 10), (7, 5), (4, 3), (2, 2)], [(1, 1), (3, 17)], [(20, 1), (5, 6)]])
def test_grid_sample_sampling_is_transformers_bit_for_bit(shapes):
    """`DeformableSampling` (the value laid out once, each level's weighted samples written into one
    buffer) gives exactly transformers' `MultiScaleDeformableAttention`: the same products summed
    in the same order."""
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        MultiScaleDeformableAttention,
    )

    for dtype in (torch.float32, torch.float64):
        inputs = _sampling_inputs(shapes, dtype=dtype)
        assert torch.equal(DeformableSampling()(*inputs), MultiScaleDeformableAttention()(*inputs))


@pytest.mark.parametrize("shapes", [[(7, 9)], [(13, 10), (7, 5), (4, 3), (2, 2)], [(1, 1), (3, 17)], [(20, 1), (5, 6)]])
def test_gather_sampling_equals_grid_sample(shapes):
    """`GatherSampling` against `DeformableSampling` (grid_sample, zeros padding, align_corners=False):
    in float64 equal to rounding; in float32 within the rounding of the sampling coordinates."""
    inputs = _sampling_inputs(shapes)
    expected = DeformableSampling()(*inputs)
    got = GatherSampling()(*inputs)
    assert got.shape == expected.shape == (2, 37, 3 * 5)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    as_float = [t.float() if torch.is_floating_point(t) else t for t in inputs[:1] + inputs[4:6]]
    inputs32 = (as_float[0], *inputs[1:4], as_float[1], as_float[2], inputs[6])
    torch.testing.assert_close(GatherSampling()(*inputs32), expected.float(), atol=2e-5, rtol=0)


def test_gather_sampling_reads_zeros_outside_the_map():
    """A point entirely outside every level samples nothing: the output is exactly zero."""
    value, spatial, shapes, starts, locations, weights, step = _sampling_inputs([(6, 4), (3, 2)], dtype=torch.float32)
    locations[:, 5] = 1.5
    locations[:, 6] = -3.0
    locations[:, 7] = torch.tensor([1e6, -1e6])
    got = GatherSampling()(value, spatial, shapes, starts, locations, weights, step)
    assert torch.equal(got[:, 5:8], torch.zeros_like(got[:, 5:8]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gather_sampling_propagates_nan_and_inf_locations_as_grid_sample(dtype):
    """A NaN or infinite sampling location (broken weights) makes its query's output NaN for that
    head, as grid_sample's NaN sample does, instead of an index out of the table's range; every
    other output is unchanged."""
    inputs = list(_sampling_inputs([(6, 4), (3, 2)], dtype=dtype))
    locations = inputs[4]
    locations[0, 5, 1, 0, 0, 0] = float("nan")
    locations[0, 6, 0, 1, 2, 1] = float("inf")
    locations[1, 7, 2, 0, 1, 0] = -float("inf")
    locations[1, 8, 0, 1, 0] = float("nan")  # both coordinates
    locations[0, 9, 2, 0, 2, 1] = 3e9  # a pixel coordinate beyond int32: off the map, reads zeros

    expected = DeformableSampling()(*inputs)
    got = GatherSampling()(*inputs)

    nan = torch.isnan(expected)
    assert nan.view(2, 37, 3, 5).all(-1).sum() == 4  # one head of each of the four queries
    assert torch.equal(torch.isnan(got), nan)
    torch.testing.assert_close(got[~nan], expected[~nan], atol=2e-5 if dtype == torch.float32 else 1e-12, rtol=0)


def test_lean_switches_between_samplings(tiny):
    model = build_model(build_config("swint_ogc", tiny))
    lean(model, sampling="grid_sample")
    kinds = {type(m).__name__ for m in model.modules()}
    assert "DeformableSampling" in kinds and "GatherSampling" not in kinds
    lean(model)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GatherSampling" in kinds and "DeformableSampling" not in kinds


# -- module by module: each lean mixin against transformers' own class, same weights ----------------

def _pair_of(factory, mixin, onednn: bool):
    """(plain, lean) copies of one transformers module with the same random weights; `onednn`
    turns their Linears into `OneDNNLinear`s (the Detector's exact CPU path) on both sides."""
    from recognize_grounding_dino.lean_layers import _mix

    from recognize.onednn_linear import use_onednn_linears

    torch.manual_seed(0)
    plain = factory().eval()
    with torch.no_grad():
        for parameter in plain.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    lean_module = factory().eval()
    lean_module.load_state_dict(plain.state_dict())
    _mix(lean_module, mixin)
    if onednn:
        use_onednn_linears(plain)
        use_onednn_linears(lean_module)
    return plain, lean_module


def test_window_indices_are_pad_roll_and_partition():
    """One gather = transformers' pad, `torch.roll` and `window_partition`; the inverse = `window_reverse`,
    the roll back and the crop (odd sizes, no shift, maps smaller than or equal to a window)."""
    from recognize_grounding_dino.lean_layers import window_indices
    from transformers.models.swin.modeling_swin import window_partition, window_reverse

    for height, width, window, shift in [(13, 9, 7, 3), (14, 14, 7, 0), (14, 14, 7, 3), (5, 20, 4, 2), (7, 7, 7, 0),
                                         (1, 1, 1, 0), (29, 8, 12, 6)]:
        x = torch.randn(2, height * width, 5)
        padded_h, padded_w = height + (window - height % window) % window, width + (window - width % window) % window
        padded = torch.nn.functional.pad(x.view(2, height, width, 5), (0, 0, 0, padded_w - width, 0, padded_h - height))
        expected = window_partition(torch.roll(padded, (-shift, -shift), (1, 2)), window).reshape(2, -1, 5)
        gather, padding, scatter = window_indices(height, width, window, shift, x.device)
        got = x.index_select(1, gather).index_fill_(1, padding, 0)
        assert torch.equal(got, expected)
        windows = torch.randn(expected.shape)
        back = window_reverse(windows.view(-1, window, window, 5), window, padded_h, padded_w)
        back = torch.roll(back, (shift, shift), (1, 2))[:, :height, :width].reshape(2, height * width, 5)
        assert torch.equal(windows.index_select(1, scatter), back)


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("size, shift", [((13, 9), 3), ((14, 14), 0), ((14, 14), 3), ((9, 8), 3), ((7, 21), 3)])
def test_lean_swin_layer_equals_transformers(size, shift, onednn):
    """`LeanSwinLayer` against `SwinLayer`: padded maps, shifted windows or not, a map
    as tall as a window. The lean MLP always runs its GEMMs through oneDNN (GELU and the residual
    add fused): bit for bit when transformers' Linears are oneDNN's too (the exact CPU path; the
    gathers only move values), within float32 rounding against plain torch's (MKL) GEMMs."""
    from recognize_grounding_dino.lean_layers import LeanSwinLayer
    from transformers import SwinConfig
    from transformers.models.swin.modeling_swin import SwinLayer

    config = SwinConfig(embed_dim=24, window_size=7)
    plain, lean_layer = _pair_of(lambda: SwinLayer(config, dim=24, input_resolution=size, num_heads=3, shift_size=shift),
                                 LeanSwinLayer, onednn)
    x = torch.randn(2, size[0] * size[1], 24)
    with torch.inference_mode():
        expected, got = plain(x, size)[0], lean_layer(x, size)[0]
        again = lean_layer(x, size)[0]  # the cached window indices
    if onednn:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-6)
    assert torch.equal(again, got)
    with torch.enable_grad():  # autograd: transformers' own forward
        assert torch.equal(lean_layer(x, size)[0], plain(x, size)[0])


@pytest.mark.parametrize("onednn", [False, True])
def test_lean_swin_layer_with_drop_path_is_lean_in_eval(onednn):
    """The released configs (drop_path_rate 0.2) give every Swin layer after the first a `SwinDropPath`,
    the identity outside training: in eval the layer takes the lean path (its window indices are cached)
    with transformers' outputs; in training (drop path acting) transformers' forward runs."""
    from recognize_grounding_dino.lean_layers import LeanSwinLayer
    from transformers import SwinConfig
    from transformers.models.swin.modeling_swin import SwinDropPath, SwinLayer

    config = SwinConfig(embed_dim=24, window_size=7)
    size = (14, 14)
    plain, lean_layer = _pair_of(lambda: SwinLayer(config, dim=24, input_resolution=size, num_heads=3, shift_size=3,
                                                   drop_path_rate=0.2), LeanSwinLayer, onednn)
    assert isinstance(lean_layer.drop_path, SwinDropPath)
    x = torch.randn(2, size[0] * size[1], 24)
    with torch.inference_mode():
        expected, got = plain(x, size)[0], lean_layer(x, size)[0]
    assert "_windows" in lean_layer.__dict__
    if onednn:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-6)
    lean_layer.__dict__.pop("_windows")
    lean_layer.train()
    with torch.inference_mode():
        lean_layer(x, size)
    assert "_windows" not in lean_layer.__dict__

    class SwinDropPath(torch.nn.Module):  # another module of the same name (a user's), which may act in eval
        def forward(self, hidden):
            return hidden * 0.5

    lean_layer.eval()
    lean_layer.drop_path = plain.drop_path = SwinDropPath().eval()
    with torch.inference_mode():
        expected, got = plain(x, size)[0], lean_layer(x, size)[0]
    assert "_windows" not in lean_layer.__dict__  # transformers' forward ran
    assert torch.equal(got, expected)


def test_lean_swin_layer_follows_a_new_map_size():
    """The window indices are cached per map size: another size is not read with stale ones."""
    from recognize_grounding_dino.lean_layers import LeanSwinLayer
    from transformers import SwinConfig
    from transformers.models.swin.modeling_swin import SwinLayer

    config = SwinConfig(embed_dim=24, window_size=7)
    plain, lean_layer = _pair_of(lambda: SwinLayer(config, dim=24, input_resolution=(14, 14), num_heads=3, shift_size=3),
                                 LeanSwinLayer, onednn=False)
    with torch.inference_mode():
        for size in [(14, 14), (9, 16), (14, 14)]:
            x = torch.randn(1, size[0] * size[1], 24)
            torch.testing.assert_close(lean_layer(x, size)[0], plain(x, size)[0], atol=2e-6, rtol=1e-6)


#: (encoder_attention_heads, encoder_ffn_dim) -> GroundingDinoBiMultiHeadAttention with heads // 2 heads
#: of (ffn // 2) / (heads // 2) dims: (8, 2048) 4 x 256, the released models' (scale 1/16: the keys are
#: scaled); (6, 144) 3 x 24 and (4, 2048) 2 x 512 (scales not powers of two: the queries are scaled)
FUSION_SIZES = [(8, 2048), (6, 144), (4, 2048)]
PROJECTIONS = ("vision_proj", "text_proj", "values_vision_proj", "values_text_proj", "out_vision_proj", "out_text_proj")


def _fusion_pair(heads: int, ffn: int, onednn: bool, biases: bool = True):
    from recognize_grounding_dino.lean_layers import LeanBiMultiHeadAttention
    from transformers import GroundingDinoConfig
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        GroundingDinoBiMultiHeadAttention,
    )

    config = GroundingDinoConfig(encoder_attention_heads=heads, encoder_ffn_dim=ffn)
    pair = _pair_of(lambda: GroundingDinoBiMultiHeadAttention(config), LeanBiMultiHeadAttention, onednn)
    if not biases:
        for module in pair:
            for name in PROJECTIONS:
                getattr(module, name).bias = None
    return pair


def _fusion_inputs(padded: bool, batch: int = 2):
    """Image and text features; padded: the last image's last 50 pixels and the first caption's last 4
    tokens are padding."""
    torch.manual_seed(1)
    vision, text = torch.randn(batch, 300, 256), torch.randn(batch, 11, 256)
    vision_mask = text_mask = None
    if padded:
        vision_mask = torch.zeros(batch, 300, dtype=torch.bool)
        vision_mask[-1, 250:] = True
        text_mask = torch.zeros(batch, 11, dtype=torch.bool)
        text_mask[0, 7:] = True
    return vision, text, vision_mask, text_mask


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("heads, ffn", FUSION_SIZES)
def test_lean_fusion_attention_strided_heads_equal_transformers(heads, ffn, padded, onednn, monkeypatch):
    """`LeanBiMultiHeadAttention` with `FOLD_FUSION = False` (the path quantised weights take too) against
    `GroundingDinoBiMultiHeadAttention`, batch 2, with padded pixels and tokens or none, for the head sizes
    of `FUSION_SIZES`. Outputs and both attention maps within float32 rounding: the same products and
    sums, bit for bit on one thread here, but with two threads `bmm` on the strided per-head views splits
    its work differently from transformers' contiguous copies."""
    from recognize_grounding_dino import lean_layers

    monkeypatch.setattr(lean_layers, "FOLD_FUSION", False)
    monkeypatch.setattr(lean_layers.LeanBiMultiHeadAttention, "_folded", _must_not_run)
    plain, lean_attention = _fusion_pair(heads, ffn, onednn)
    inputs = _fusion_inputs(padded)
    with torch.inference_mode():
        expected = plain(*inputs)
        got = lean_attention(*inputs)
    for (want, have) in zip(expected, got):
        # outputs reach ~90 here: float32 rounding of a sum at that scale is ~1e-5 even where the result is
        # near 0 (seen: 2.7e-5 on an AVX2-only CPU through oneDNN, 2 threads), so atol follows the largest
        scale = want[0].abs().max().item()
        torch.testing.assert_close(have[0], want[0], atol=max(1e-5, 1e-6 * scale), rtol=1e-5)  # outputs
        torch.testing.assert_close(have[1], want[1], atol=1e-6, rtol=1e-5)  # attention maps (0 where masked)


def _must_not_run(*args, **kwargs):
    raise AssertionError("this path should not run here")


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("batch, padded, biases", [(1, False, True), (1, True, True), (2, False, True),
                                                   (2, True, True), (2, True, False)])
@pytest.mark.parametrize("heads, ffn", FUSION_SIZES)
def test_folded_fusion_attention_is_as_close_to_float64_as_transformers(heads, ffn, batch, padded, biases, onednn,
                                                                        monkeypatch):
    """The folded fusion attention (the default; the strided-heads path is made to fail here, so the fold
    must run) sums the same quantities in another order, so it is judged against a float64 run of
    transformers' forward, beside transformers' own float32 forward: its error on each output and
    attention map stays within 4x transformers' (measured 1.0-2.4x here, with weights and inputs ~5x
    larger than a trained model's; at the released size, 800 x 1333 and 51 tokens, as close as
    transformers'), with transformers' shapes and dtypes, and the masked entries exactly 0. Batch 1 (a
    single image: the outputs are views) and 2, the six projections with and without biases."""
    from recognize_grounding_dino import lean_layers

    monkeypatch.setattr(lean_layers.LeanBiMultiHeadAttention, "_strided_heads", _must_not_run)
    plain, lean_attention = _fusion_pair(heads, ffn, onednn, biases)
    inputs = _fusion_inputs(padded, batch)
    reference = _plain_float64(plain)
    with torch.inference_mode():
        expected = reference(*[x.double() if x is not None and x.is_floating_point() else x for x in inputs])
        theirs = plain(*inputs)
        got = lean_attention(*inputs)
    for side in range(2):
        for item in range(2):  # output, attention map
            want, have = expected[side][item], got[side][item]
            assert have.shape == theirs[side][item].shape and have.dtype == theirs[side][item].dtype
            their_error = (theirs[side][item].double() - want).abs().max().item()
            our_error = (have.double() - want).abs().max().item()
            assert our_error <= 4 * their_error + 1e-7 * want.abs().max().item(), (side, item, our_error, their_error)
    if padded:  # maps are [batch * heads, ...]: the first caption's last 4 tokens, the last image's last 50 pixels
        per_image = got[0][1].shape[0] // batch
        assert not got[0][1][:per_image, :, 7:].any() and got[0][1][:per_image, :, :7].all()
        assert not got[1][1][-per_image:, :, 250:].any()


def test_fusion_attention_does_not_fold_over_hooked_or_wrapped_projections():
    """The fold reads the image-side projections' weights instead of calling them, so a hook on one
    (or a Linear subclass, e.g. a LoRA-style wrapper) sends the layer to the strided-heads path, which
    calls every projection: the hook runs and the output is what it made it."""
    plain, lean_attention = _fusion_pair(8, 2048, onednn=True)
    inputs = _fusion_inputs(padded=False, batch=1)
    calls = []

    def doubled(module, args, output):
        calls.append(module)
        return output * 2

    for module in (plain, lean_attention):
        module.values_vision_proj.register_forward_hook(doubled)
    with torch.inference_mode():
        expected = plain(*inputs)
        got = lean_attention(*inputs)
    assert len(calls) == 2
    torch.testing.assert_close(got[1][0], expected[1][0], atol=1e-4, rtol=1e-4)  # text side: the doubled values

    class Wrapped(torch.nn.Linear):
        pass

    lean_attention.out_vision_proj.__class__ = Wrapped
    assert not lean_attention._foldable()


def _plain_float64(module: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of `module` running transformers' own forward (plain `nn.Linear`s)."""
    from recognize.onednn_linear import OneDNNLinear

    reference = copy.deepcopy(module).double()
    for layer in reference.modules():
        if type(layer) is OneDNNLinear:
            layer.__class__ = torch.nn.Linear
    return reference


@pytest.mark.parametrize("onednn", [False, True])
def test_lean_deformable_layer_equals_transformers(onednn):
    """`LeanDeformableLayer` (ReLU and residual inside the feed-forward GEMMs) against
    `GroundingDinoDeformableLayer`, with a padding mask: bit for bit with the oneDNN Linears on both
    sides (the exact CPU path: oneDNN applies the same ReLU and add to the same GEMM output); within
    float32 rounding against plain torch's GEMMs."""
    from recognize_grounding_dino.lean_layers import LeanDeformableLayer
    from transformers import GroundingDinoConfig
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        GroundingDinoDeformableLayer,
    )

    config = GroundingDinoConfig()
    plain, lean_layer = _pair_of(lambda: GroundingDinoDeformableLayer(config), LeanDeformableLayer, onednn)
    shapes = [(8, 10), (4, 5), (2, 3), (1, 2)]
    tokens = sum(h * w for h, w in shapes)
    spatial = torch.tensor(shapes)
    starts = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])
    hidden, position = torch.randn(2, tokens, 256), torch.randn(2, tokens, 256)
    reference = torch.rand(2, tokens, len(shapes), 2)
    keep = torch.ones(2, tokens, dtype=torch.bool)
    keep[1, 60:80] = False
    with torch.inference_mode():
        expected = plain(hidden, keep, position, reference, spatial, shapes, starts)[0]
        got = lean_layer(hidden, keep, position, reference, spatial, shapes, starts)[0]
    if onednn:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("coordinates", [2, 4])
def test_lean_deformable_attention_is_transformers_bit_for_bit(masked, coordinates, monkeypatch):
    """`LeanDeformableAttention` against `GroundingDinoMultiscaleDeformableAttention` (the same sampling
    module inside both): point locations (2 coordinates: the encoder's) are computed by the lean forward
    with contiguous broadcasts, the same divisions and additions, so the outputs and attention weights are
    equal bit for bit (transformers' forward is made to fail for it); box-relative locations (4
    coordinates: the decoder's) go to transformers' forward (checked that it runs)."""
    from recognize_grounding_dino.lean_layers import LeanDeformableAttention
    from transformers import GroundingDinoConfig
    from transformers.models.grounding_dino.modeling_grounding_dino import (
        GroundingDinoMultiscaleDeformableAttention,
    )

    config = GroundingDinoConfig()
    plain, lean_attention = _pair_of(lambda: GroundingDinoMultiscaleDeformableAttention(config, num_heads=8, n_points=4),
                                     LeanDeformableAttention, onednn=True)
    shapes = [(8, 10), (4, 5), (2, 3), (1, 2)]
    tokens = sum(h * w for h, w in shapes)
    spatial = torch.tensor(shapes)
    starts = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])
    torch.manual_seed(2)
    queries = tokens if coordinates == 2 else 30
    hidden, memory, position = torch.randn(2, queries, 256), torch.randn(2, tokens, 256), torch.randn(2, queries, 256)
    reference = torch.rand(2, queries, len(shapes), coordinates)
    keep = None
    if masked:
        keep = torch.ones(2, tokens, dtype=torch.bool)
        keep[1, 60:80] = False
    arguments = {"encoder_hidden_states": memory, "position_embeddings": position, "reference_points": reference,
                 "spatial_shapes": spatial, "spatial_shapes_list": shapes, "level_start_index": starts}
    with torch.inference_mode():
        expected = plain(hidden, keep, **arguments)
    transformers_forward = GroundingDinoMultiscaleDeformableAttention.forward
    calls = []

    def spied(self, *args, **kwargs):
        calls.append(coordinates)
        assert coordinates == 4, "the lean forward should handle 2-coordinate reference points"
        return transformers_forward(self, *args, **kwargs)

    monkeypatch.setattr(GroundingDinoMultiscaleDeformableAttention, "forward", spied)
    with torch.inference_mode():
        got = lean_attention(hidden, keep, **arguments)
    assert calls == ([] if coordinates == 2 else [4])
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1], expected[1])


def test_lean_layers_defer_to_transformers_under_autocast():
    """Under bf16 autocast (the fast mode) the lean Swin layer gives transformers' own result, dtype
    included (its fused residual add would keep bf16 where transformers' `+` promotes to float32)."""
    from recognize_grounding_dino.lean_layers import LeanSwinLayer
    from transformers import SwinConfig
    from transformers.models.swin.modeling_swin import SwinLayer

    config = SwinConfig(embed_dim=24, window_size=7)
    plain, lean_layer = _pair_of(lambda: SwinLayer(config, dim=24, input_resolution=(9, 8), num_heads=3, shift_size=3),
                                 LeanSwinLayer, onednn=True)
    x = torch.randn(1, 72, 24)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = plain(x, (9, 8))[0], lean_layer(x, (9, 8))[0]
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)
