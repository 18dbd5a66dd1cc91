"""`recognize.onednn_linear`: oneDNN's fused bias/GELU/residual linear agrees with torch's, and the plain
path is torch's own bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from recognize import onednn_linear
from recognize.onednn_linear import linear, linear_weights, use_onednn_linears
from torch import nn


@pytest.fixture
def layer() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(48, 40).eval()


@pytest.mark.parametrize("gelu, residual, relu", [(False, False, False), (True, False, False), (False, True, False),
                                                  (False, False, True)])
@pytest.mark.parametrize("onednn", [True, False])
def test_linear_matches_torch(layer, gelu, residual, relu, onednn, monkeypatch):
    monkeypatch.setattr(onednn_linear, "ONEDNN", onednn)
    x = torch.randn(2, 5, 7, 48)
    other = torch.randn(2, 5, 7, 40) if residual else None
    with torch.inference_mode():
        expected = layer(x)
        expected = F.gelu(expected) if gelu else expected
        expected = F.relu(expected) if relu else expected
        expected = expected + other if residual else expected
        got = linear(layer, x, gelu=gelu, residual=other, relu=relu)
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


def test_use_onednn_linears_keeps_parameters_keys_and_outputs():
    """The class swap changes neither the state dict nor (beyond rounding) the outputs; subclasses stay."""

    class Special(nn.Linear):
        pass

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), Special(32, 8))
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 16)
    with torch.inference_mode():
        expected = model(x)
        assert use_onednn_linears(model) == 1
        got = model(x)
    assert type(model[0]).__name__ == "OneDNNLinear" and type(model[2]) is Special
    assert model.state_dict().keys() == keys.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in keys.items())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_onednn_linear_defers_to_autocast():
    """Under CPU autocast the layer is torch's Linear (bf16 GEMM), bit for bit."""
    torch.manual_seed(2)
    layer = nn.Linear(16, 8).eval()
    plain = nn.Linear(16, 8).eval()
    plain.load_state_dict(layer.state_dict())
    use_onednn_linears(layer)
    x = torch.randn(4, 16)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer(x), plain(x))


def test_input_gradients_go_through_torch():
    """Frozen weights but an input that needs gradients (saliency maps): autograd must see the op."""
    torch.manual_seed(3)
    layer = nn.Linear(16, 8).requires_grad_(False)
    use_onednn_linears(layer)
    x = torch.randn(4, 16, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(4, 16))


def test_an_activation_and_a_residual_together_are_refused(layer):
    for activation in ({"gelu": True}, {"relu": True}):
        with pytest.raises(ValueError, match="activation and a residual"):
            linear(layer, torch.randn(2, 48), residual=torch.randn(2, 40), **activation)
    with pytest.raises(ValueError, match="exclusive"):
        linear(layer, torch.randn(2, 48), gelu=True, relu=True)


def test_quantized_weights_after_the_swap_use_torchao():
    """torchao's `quantize_` still finds the swapped layers (a subclass of nn.Linear) and the int8 weights
    then run through torch's F.linear, as on a plain nn.Linear."""
    pytest.importorskip("torchao")
    from recognize.fast_modes import quantize_linear_int8

    torch.manual_seed(4)
    swapped, plain = nn.Linear(64, 32).eval(), nn.Linear(64, 32).eval()
    plain.load_state_dict(swapped.state_dict())
    use_onednn_linears(swapped)
    quantize_linear_int8(swapped)
    quantize_linear_int8(plain)
    assert type(swapped.weight) is type(plain.weight) and type(plain.weight) not in (torch.Tensor, nn.Parameter)
    x = torch.randn(5, 64)
    with torch.inference_mode():
        assert torch.equal(swapped(x), plain(x))


def test_linear_weights_matches_f_linear(layer):
    x = torch.randn(3, 7, 48)
    with torch.inference_mode():
        torch.testing.assert_close(linear_weights(x, layer.weight, layer.bias), F.linear(x, layer.weight, layer.bias),
                                   rtol=1e-5, atol=1e-5)
        assert torch.equal(linear_weights(x.double(), layer.weight.double()), F.linear(x.double(), layer.weight.double()))


class _OpWithoutGelu:
    """`torch.ops.mkldnn._linear_pointwise` as a torch build without its GELU variant has it (the
    others pass through to the real op and are counted)."""

    def __init__(self, real) -> None:
        self.real, self.calls = real, []

    def __call__(self, x, weight, bias, attr, scalars, algorithm):
        if attr == "gelu":
            raise RuntimeError("mkldnn _linear_pointwise: unsupported post-op gelu")
        self.calls.append(attr)
        return self.real(x, weight, bias, attr, scalars, algorithm)

    def binary(self, *args):
        self.calls.append("add")
        return self.real.binary(*args)


@pytest.mark.skipif(not onednn_linear.available(), reason="this torch build has no oneDNN linear")
def test_a_missing_fused_variant_falls_back_to_torch_alone(layer, monkeypatch):
    """Each variant is probed: a build lacking GELU runs that one through plain torch (the same bits as
    `F.gelu(layer(x))`) instead of raising at first use, and still fuses the others."""
    fake = _OpWithoutGelu(torch.ops.mkldnn._linear_pointwise)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", fake)
    monkeypatch.setattr(onednn_linear, "_available", None)  # probe again, against this build
    assert [onednn_linear.available(v) for v in onednn_linear.VARIANTS] == [True, True, False, True]
    x, other = torch.randn(3, 48), torch.randn(3, 40)
    with torch.inference_mode():
        fake.calls.clear()
        assert torch.equal(linear(layer, x, gelu=True), F.gelu(F.linear(x, layer.weight, layer.bias)))
        assert fake.calls == []  # plain torch
        torch.testing.assert_close(linear(layer, x, relu=True), F.relu(layer(x)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(linear(layer, x, residual=other), layer(x) + other, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(linear(layer, x), layer(x), rtol=1e-5, atol=1e-5)
    assert fake.calls == ["relu", "add", "none"]  # the others still through oneDNN
