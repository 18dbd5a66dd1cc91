"""`recognize.onednn_linear`: oneDNN's fused bias/GELU/residual linear agrees with torch's, and the plain
path is torch's own bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from recognize import onednn_linear
from recognize.onednn_linear import linear, linear_weights, use_onednn_linears
from torch import nn


@pytest.fixture(autouse=True)
def onednn_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are of the oneDNN path: on, whatever this CPU's default (`onednn_by_default`)."""
    monkeypatch.setattr(onednn_linear, "ONEDNN", True)


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


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_gradients_pass_the_in_place_activation(activation):
    """torch's path applies the activation in place on the product: autograd still gets its gradient."""
    torch.manual_seed(4)
    layer = nn.Linear(16, 8)
    x = torch.randn(4, 16, requires_grad=True)
    linear(layer, x, **{activation: True}).sum().backward()
    got = x.grad.clone(), layer.weight.grad.clone()
    x.grad = layer.weight.grad = None
    getattr(F, activation)(layer(x)).sum().backward()
    torch.testing.assert_close(got, (x.grad, layer.weight.grad))


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


# -- prepacked weights (`PACKED`) ----------------------------------------------------------------

needs_packing = pytest.mark.skipif(not onednn_linear.available("packed"),
                                   reason="this torch build cannot prepack a oneDNN linear weight")


@pytest.fixture
def packed_cache(monkeypatch) -> dict:
    """This test's packed copies only (other tests' layers may still be alive), packing on."""
    cache: dict = {}
    monkeypatch.setattr(onednn_linear, "_packed", cache)
    monkeypatch.setattr(onednn_linear, "PACKED", True)
    monkeypatch.setattr(onednn_linear, "_suspended", False)
    return cache


def _run(layer, x, variant, other=None, packed=True):
    with pytest.MonkeyPatch.context() as mp, torch.inference_mode():
        mp.setattr(onednn_linear, "PACKED", packed)
        return linear(layer, x, gelu=variant == "gelu", relu=variant == "relu",
                      residual=other if variant == "add" else None)


@needs_packing
@pytest.mark.parametrize("variant", onednn_linear.VARIANTS)
def test_the_packed_weight_gives_the_plain_weights_bits(layer, variant, packed_cache):
    """The speed-up is claimed to change no bit: every fused variant and every batch shape (the GEMM's
    blocking depends on M) against the same op given the plain weight, and close to torch's Linear."""
    torch.manual_seed(5)
    for shape in [(1, 48), (1, 1, 48), (2, 48), (3, 48), (2, 17, 48), (4, 64, 48), (1, 9, 9, 48)]:
        x = torch.randn(shape)
        other = torch.randn(*shape[:-1], 40)
        got, plain = _run(layer, x, variant, other), _run(layer, x, variant, other, packed=False)
        assert torch.equal(got, plain), (variant, shape)
        with torch.inference_mode():
            expected = layer(x)
        expected = {"gelu": F.gelu, "relu": F.relu}.get(variant, lambda t: t)(expected)
        expected = expected + other if variant == "add" else expected
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert list(packed_cache) == [id(layer.weight)]  # the packed path was the one taken, once for all shapes


@needs_packing
def test_a_single_row_is_multiplied_by_the_plain_weight(layer, packed_cache):
    """One row (M = 1): oneDNN's kernel for it rounds differently with a packed weight than with the
    plain one (torch 2.14), so the plain weight is used and no copy is made for it."""
    x = torch.randn(1, 1, 48)
    with torch.inference_mode():
        plain = torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
        assert torch.equal(linear(layer, x), plain)
        assert torch.equal(linear_weights(x, layer.weight, layer.bias, packed=True), plain)
        assert packed_cache == {}
        linear(layer, torch.randn(2, 48))
    assert list(packed_cache) == [id(layer.weight)]


@needs_packing
def test_the_packed_copy_is_made_once_and_reused(layer, packed_cache):
    first = onednn_linear._packed_or_plain(layer.weight)
    assert first is not layer.weight and first.is_mkldnn
    assert onednn_linear._packed_or_plain(layer.weight) is first
    with torch.inference_mode():
        linear(layer, torch.randn(3, 48))
    assert onednn_linear._packed_or_plain(layer.weight) is first  # linear() multiplied by the same copy
    assert onednn_linear.packed_bytes() == torch.ops.mkldnn._nbytes(first) >= layer.weight.numel() * 4


def _follows_the_weight(layer, x):
    """linear() against torch with the layer's current weight: a stale packed copy gives the old outputs."""
    with torch.inference_mode():
        got = linear(layer, x)
        expected = F.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, _run(layer, x, "none", packed=False))


@needs_packing
def test_an_in_place_change_makes_a_new_copy(layer, packed_cache):
    """The version counter is the only thing an in-place change moves (same tensor, pointer, shape)."""
    x = torch.randn(5, 48)
    first = onednn_linear._packed_or_plain(layer.weight)
    with torch.no_grad():
        layer.weight.add_(1.0)
    _follows_the_weight(layer, x)
    assert onednn_linear._packed_or_plain(layer.weight) is not first
    with torch.inference_mode():  # an in-place change of a normal tensor under inference mode counts too
        layer.weight.mul_(-2.0)
    _follows_the_weight(layer, x)
    assert len(packed_cache) == 1


@needs_packing
def test_a_new_parameter_or_new_data_makes_a_new_copy(layer, packed_cache):
    x = torch.randn(5, 48)
    _follows_the_weight(layer, x)
    old = layer.weight
    layer.weight = nn.Parameter(torch.randn(40, 48))
    _follows_the_weight(layer, x)
    assert id(layer.weight) in packed_cache
    del old
    assert list(packed_cache) == [id(layer.weight)]  # the old weight's copy left with it
    kept = layer.weight.data  # held, so the new data cannot land at the old address
    layer.weight.data = torch.randn(40, 48)  # same Parameter and version: only the data pointer moved
    _follows_the_weight(layer, x)
    assert not torch.equal(kept, layer.weight)


@needs_packing
def test_a_reshaped_weight_makes_a_new_copy(packed_cache):
    """Same tensor, data pointer and version, another shape (`.data` swapped for a view)."""
    torch.manual_seed(6)
    weight = torch.randn(40, 48)
    x = torch.randn(3, 48)
    with torch.inference_mode():
        torch.testing.assert_close(linear_weights(x, weight, packed=True), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    weight.data = weight.data.view(80, 24)
    x = torch.randn(3, 24)
    with torch.inference_mode():
        torch.testing.assert_close(linear_weights(x, weight, packed=True), F.linear(x, weight), rtol=1e-5, atol=1e-5)


@needs_packing
def test_drop_packed_frees_every_copy_and_returns_its_bytes(packed_cache):
    torch.manual_seed(7)
    layers = [nn.Linear(48, 40).eval(), nn.Linear(40, 24).eval()]
    copies = [onednn_linear._packed_or_plain(each.weight) for each in layers]
    held = sum(torch.ops.mkldnn._nbytes(copy) for copy in copies)
    assert onednn_linear.packed_bytes() == held > 0

    assert onednn_linear.drop_packed() == held

    assert packed_cache == {} and onednn_linear.packed_bytes() == 0 and onednn_linear.drop_packed() == 0
    again = onednn_linear._packed_or_plain(layers[0].weight)  # made again at the next call
    assert again is not copies[0] and len(packed_cache) == 1


@needs_packing
def test_a_copy_leaves_with_its_layer(packed_cache):
    import gc

    torch.manual_seed(8)
    layer = nn.Linear(48, 40).eval()
    with torch.inference_mode():
        linear(layer, torch.randn(2, 48))
    assert len(packed_cache) == 1 and onednn_linear.packed_bytes() > 0
    del layer
    gc.collect()
    assert packed_cache == {} and onednn_linear.packed_bytes() == 0


def test_packing_off_multiplies_by_the_plain_weight(layer, packed_cache, monkeypatch):
    monkeypatch.setattr(onednn_linear, "PACKED", False)
    x = torch.randn(3, 48)
    with torch.inference_mode():
        got = linear(layer, x)
        linear_weights(x, layer.weight, layer.bias, packed=True)
    torch.testing.assert_close(got, layer(x), rtol=1e-5, atol=1e-5)
    assert packed_cache == {} and onednn_linear._packed_or_plain(layer.weight) is layer.weight


@pytest.mark.skipif(not onednn_linear.available(), reason="this torch build has no oneDNN linear")
def test_a_build_that_cannot_pack_uses_the_plain_weight(layer, packed_cache, monkeypatch):
    """A torch build without the reorder op: every variant still runs, through the plain weight."""
    monkeypatch.setattr(onednn_linear, "_available", {**{v: True for v in onednn_linear.VARIANTS}, "packed": False})
    x, other = torch.randn(3, 48), torch.randn(3, 40)
    with torch.inference_mode():
        torch.testing.assert_close(linear(layer, x, gelu=True), F.gelu(layer(x)), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(linear(layer, x, residual=other), layer(x) + other, rtol=1e-5, atol=1e-5)
    assert packed_cache == {}


@needs_packing
def test_linear_weights_packs_only_when_asked(layer, packed_cache):
    """Per-call weights (attention's keys) must not be packed (a reorder per call, a cache entry per
    tensor); kept ones (the fused Swin q/k/v) are."""
    x = torch.randn(3, 7, 48)
    with torch.inference_mode():
        expected = linear_weights(x, layer.weight, layer.bias)
        assert packed_cache == {}
        assert torch.equal(linear_weights(x, layer.weight, layer.bias, packed=True), expected)
    assert list(packed_cache) == [id(layer.weight)]


@needs_packing
def test_a_model_built_under_inference_mode_is_not_packed(packed_cache):
    """Inference tensors have no version counter (`_version` raises): an in-place change could not be
    seen, so they are multiplied by as they are, and linear() works (it raised before this was checked;
    a Grounding DINO forward makes its fused q/k/v weight under inference mode)."""
    torch.manual_seed(9)
    x = torch.randn(3, 48)
    with torch.inference_mode():
        layer = nn.Linear(48, 40).eval()
        assert layer.weight.is_inference()
        torch.testing.assert_close(linear(layer, x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
        weight = torch.cat([layer.weight, layer.weight])
        torch.testing.assert_close(linear_weights(x, weight, packed=True), F.linear(x, weight), rtol=1e-5, atol=1e-5)
        layer.weight.add_(1.0)  # allowed under inference mode, and not seen by any version check
        torch.testing.assert_close(linear(layer, x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    assert packed_cache == {}


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="madvise / smaps are Linux's")
@needs_packing
def test_a_mapped_weight_leaves_rss_once_packed(tmp_path, packed_cache, monkeypatch):
    """A checkpoint's weight, memory-mapped and assigned to the layer: once the packed copy exists the
    mapped pages are not read, so they leave RSS (else the weight is held twice); the output is the
    plain path's."""
    from resident import resident_kib

    from recognize import resident_weights
    from recognize.weights_file import read_weights

    monkeypatch.setattr(resident_weights, "_mapped", [])  # only this test's file is a noted mapping
    torch.manual_seed(10)
    path = tmp_path / "linear.pth"
    torch.save(nn.Linear(2048, 1024).state_dict(), path)  # an 8 MB weight
    plain = nn.Linear(2048, 1024).eval()
    plain.load_state_dict(torch.load(path, weights_only=True))
    layer = nn.Linear(2048, 1024, device="meta").eval()
    layer.load_state_dict(read_weights(path), assign=True)
    assert float(layer.weight.detach().sum()) == float(plain.weight.detach().sum())  # every page read in
    assert resident_kib(path) >= 7_000
    x = torch.randn(4, 2048)

    got = _run(layer, x, "none")

    assert list(packed_cache) == [id(layer.weight)]
    assert resident_kib(path) < 1_000
    assert torch.equal(got, _run(plain, x, "none", packed=False))
    assert torch.equal(layer.weight, plain.weight)  # read again from the page cache: the same values


def test_a_weight_dying_while_its_thread_holds_the_cache_lock_does_not_hang(layer, packed_cache):
    """The weakref callback that forgets a dead weight's copy can run on a thread that holds the cache's
    lock (the garbage collector runs inside `drop_packed`): the lock is re-entrant."""
    import threading

    with torch.inference_mode():
        linear(layer, torch.randn(3, 48))
    key = next(iter(packed_cache))
    done = threading.Event()

    def forget_under_the_lock():
        with onednn_linear._packed_lock:
            onednn_linear._forget(key)  # what the callback does; the weight is alive: its copy stays
        done.set()

    worker = threading.Thread(target=forget_under_the_lock, daemon=True)
    worker.start()
    assert done.wait(5), "forgetting a copy under the cache lock hung"
    assert key in packed_cache


@pytest.mark.parametrize("setting, capability, expected", [
    ("auto", "AVX512", True), ("auto", "AVX2", False), ("", "DEFAULT", False), ("AUTO", "AVX512", True),
    ("1", "AVX2", True), ("on", "AVX2", True), ("0", "AVX512", False), ("off", "AVX512", False),
])
def test_the_default_follows_the_cpu_unless_the_environment_says(setting, capability, expected):
    """oneDNN by default only where torch runs AVX-512 kernels (on AVX2 MKL was faster: module doc)."""
    assert onednn_linear.onednn_by_default(setting, capability) is expected


def test_an_unknown_setting_chooses_by_cpu_and_says_so(caplog):
    with caplog.at_level("WARNING", logger="recognize.onednn_linear"):
        assert onednn_linear.onednn_by_default("fast", "AVX512") is True
        assert onednn_linear.onednn_by_default("fast", "AVX2") is False
    assert "RECOGNIZE_ONEDNN='fast' is not 1, 0 or auto" in caplog.text


def test_the_environment_variable_decides_in_a_new_process():
    """The choice is made at import, from `RECOGNIZE_ONEDNN` (a user's switch, read once)."""
    import os
    import subprocess
    import sys

    code = "from recognize import onednn_linear; print(onednn_linear.ONEDNN)"
    by_cpu = str(torch.backends.cpu.get_cpu_capability() in onednn_linear.ONEDNN_CAPABILITIES)
    for setting, expected in (("1", "True"), ("0", "False"), (None, by_cpu), ("auto", by_cpu)):
        env = {key: value for key, value in os.environ.items() if key != onednn_linear.ONEDNN_ENV}
        if setting is not None:
            env[onednn_linear.ONEDNN_ENV] = setting
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected, setting
