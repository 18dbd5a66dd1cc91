"""Building on meta and assigning a state dict (recognize.meta_init)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recognize.meta_init import (
    allocate_parameters,
    assign_state,
    parameters_on_meta,
    tensors_left_on_meta,
)


class WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.register_buffer("scale", torch.arange(2.0), persistent=False)


def test_parameters_on_meta_keeps_buffers_real():
    with parameters_on_meta():
        module = WithBuffer()
    assert all(p.is_meta for p in module.parameters())
    assert torch.equal(module.scale, torch.arange(2.0))
    assert tensors_left_on_meta(module) == ["linear.weight", "linear.bias"]


def test_assign_state_assigns_the_given_tensors():
    state = {"linear.weight": torch.randn(2, 3), "linear.bias": torch.randn(2)}
    with parameters_on_meta():
        module = WithBuffer()
    assign_state(module, state)
    assert module.linear.weight.data_ptr() == state["linear.weight"].data_ptr()  # no copy
    assert isinstance(module.linear.weight, nn.Parameter) and module.linear.weight.requires_grad
    assert tensors_left_on_meta(module) == []


def test_assign_state_gives_what_a_copy_gives_for_other_dtypes_and_layouts():
    state = {"linear.weight": torch.randn(3, 2).t(), "linear.bias": torch.randn(2).half()}  # non-contiguous, fp16
    eager = WithBuffer()
    assign_state(eager, state)  # real parameters: a plain copy
    with parameters_on_meta():
        lazy = WithBuffer()
    assign_state(lazy, state)
    for (name, a), b in zip(lazy.state_dict().items(), eager.state_dict().values()):
        assert a.dtype == b.dtype == torch.float32 and a.is_contiguous() and torch.equal(a, b), name


def test_a_tensor_left_on_meta_is_a_programming_error():
    class Extra(WithBuffer):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("derived", torch.empty(2, device="meta"), persistent=False)

    with parameters_on_meta():
        module = Extra()
    with pytest.raises(RuntimeError, match="left without values.*derived"):
        assign_state(module, {"linear.weight": torch.randn(2, 3), "linear.bias": torch.randn(2)})


def test_allocate_parameters_gives_meta_parameters_memory_and_keeps_shared_ones_shared():
    class Shared(WithBuffer):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(3, 2)
            self.head.weight = self.linear.weight  # one parameter under two names

    with parameters_on_meta():
        module = Shared()
    assert allocate_parameters(module) is module
    assert tensors_left_on_meta(module) == []
    assert module.head.weight is module.linear.weight and module.head.weight.device.type == "cpu"
    assert isinstance(module.head.bias, nn.Parameter) and module.head.bias.requires_grad
    assert torch.equal(module.scale, torch.arange(2.0))  # buffers untouched


class Frozen(nn.Module):
    """A constructor that freezes one parameter and reshapes another in place after initialising them."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.linear.weight.requires_grad_(False)
        self.scale = nn.Parameter(torch.ones(4))
        nn.init.normal_(self.scale)
        with torch.no_grad():
            self.scale.unsqueeze_(0)


def test_meta_build_skips_only_value_writes():
    """The init (values) is skipped on meta; flags and shapes set in place are kept, as in a normal build."""
    eager = Frozen()
    with parameters_on_meta():
        lazy = Frozen()
    assert all(p.is_meta for p in lazy.parameters())
    assert lazy.scale.shape == eager.scale.shape == (1, 4)
    assert not lazy.linear.weight.requires_grad and lazy.linear.bias.requires_grad
    assign_state(lazy, {k: torch.randn(v.shape) for k, v in eager.state_dict().items()})
    assert not lazy.linear.weight.requires_grad  # load_state_dict(assign=True) keeps the module's flag
    assert {n for n, p in lazy.named_parameters() if p.requires_grad} == {"linear.bias", "scale"}
