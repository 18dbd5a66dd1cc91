"""`lean_layers`: the leaner forwards give transformers' own outputs for the same weights."""

from __future__ import annotations

import pytest
import torch
from gd_support import randomize_
from recognize_grounding_dino.lean_layers import DeformableSampling, GatherSampling, lean
from recognize_grounding_dino.model import build_config, build_model


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
    """Bit for bit here (each fused q/k/v GEMM may round the last bit differently on other CPUs, so
    the comparison allows float32 rounding); with padded pixels and tokens the masks are used."""
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
