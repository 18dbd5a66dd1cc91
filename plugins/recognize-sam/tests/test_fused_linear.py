"""`fused_linear.linear`: oneDNN's fused bias/GELU/residual linear agrees with torch's, and the plain
path is torch's own bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from recognize_sam import fused_linear
from recognize_sam.fused_linear import linear
from torch import nn


@pytest.fixture
def layer() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(48, 40).eval()


@pytest.mark.parametrize("gelu, residual", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("onednn", [True, False])
def test_linear_matches_torch(layer, gelu, residual, onednn, monkeypatch):
    monkeypatch.setattr(fused_linear, "ONEDNN", onednn)
    x = torch.randn(2, 5, 7, 48)
    other = torch.randn(2, 5, 7, 40) if residual else None
    with torch.inference_mode():
        expected = layer(x)
        expected = F.gelu(expected) if gelu else expected
        expected = expected + other if residual else expected
        got = linear(layer, x, gelu=gelu, residual=other)
    assert got.shape == expected.shape
    if onednn:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(got, expected)


def test_strided_input(layer):
    x = torch.randn(1, 9, 9, 48)[:, :7, :6]
    with torch.inference_mode():
        torch.testing.assert_close(linear(layer, x), layer(x), rtol=1e-5, atol=1e-5)


def test_plain_torch_where_onednn_does_not_apply(layer):
    """Autograd must track the op (trainable weights, grad mode on): torch's Linear, exactly."""
    x = torch.randn(3, 48)
    assert torch.equal(linear(layer, x, gelu=True), F.gelu(layer(x)))
    assert linear(layer, x).requires_grad
    with torch.inference_mode():
        assert torch.equal(linear(layer.double(), x.double()), layer(x.double()))
