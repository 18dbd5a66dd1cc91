"""Building a model without initialising its weights: parameters on the meta device, then assigned.

Why: a released model is 0.5-2.5 GB of fp32 parameters. Building it normally fills them with
random values (seconds of `trunc_normal_`/`kaiming_uniform_` on 2 cores; SAM vit_h's are the most)
only for `load_state_dict` to copy the checkpoint over them, so peak memory held the weights twice.
Built inside `parameters_on_meta()` the parameters cost nothing; loading then assigns the
checkpoint's own tensors (`load_state_dict(assign=True)`, see `assign_state`), which, read from a
memory-mapped file, are the file's pages, read once, lazily. Buffers stay real because constructors
compute them (position indices, attention masks, pixel statistics): most are not in checkpoints.

Used by the RAM/RAM++ loaders (`recognize.taggers.checkpoint`), SAM and Grounding DINO.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["allocate_parameters", "assign_state", "parameter_device", "parameters_on_meta", "tensors_left_on_meta"]

_meta_state = threading.local()
_original_register_parameter = nn.Module.register_parameter


def _register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    _original_register_parameter(module, name, param)
    if param is not None and getattr(_meta_state, "depth", 0) and not param.is_meta:
        module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)


#: In-place ops that only write values (no shape, stride, dtype, device or autograd flag changes):
#: `torch.nn.init`'s initialisers and the tensor ops they and timm's/transformers' inits decompose
#: into. Logged while building RAM, RAM++, SAM and Grounding DINO on meta: `kaiming_uniform_`,
#: `uniform_`, `normal_`, `constant_`, `fill_`, `zero_`, `copy_`, and timm's `trunc_normal_` as
#: `uniform_`/`erfinv_`/`mul_`/`add_`/`clamp_`; the rest are their siblings.
VALUE_ONLY_IN_PLACE = frozenset({
    # torch.nn.init (and transformers.initialization's wrappers of the same names)
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
    # tensor methods
    "fill_", "zero_", "copy_", "clamp_", "clamp_min_", "clamp_max_", "clip_", "erfinv_", "mul_", "add_",
    "sub_", "div_", "neg_", "exp_", "log_", "sqrt_", "abs_", "masked_fill_", "fill_diagonal_",
    "exponential_", "bernoulli_", "random_", "geometric_", "log_normal_", "cauchy_",
})


class _SkipInPlaceOnMeta(TorchFunctionMode):
    """Value-only in-place ops on meta tensors (`VALUE_ONLY_IN_PLACE`, and `tensor[...] = ...`) do
    nothing but return their input: a meta tensor has no values to write.

    Why: the constructors still "initialise" the meta parameters (`kaiming_uniform_`, timm's
    `trunc_normal_` -> `uniform_`, `erfinv_`, `clamp_`...), and on the meta device torch runs most
    of these through its Python reference implementations: ~1 s of CPU for RAM++'s Swin-L alone,
    for tensors whose values are thrown away. Every other op runs as usual, so shapes, dtypes and
    flags come out as a normal build's: `requires_grad_(False)` still freezes a parameter (which
    `load_state_dict(assign=True)` keeps), and shape-changing in-place ops (`resize_`,
    `unsqueeze_`, `t_`, ...) still change the shape. A torch function mode is thread-local, so
    another thread's tensors are never affected."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor")  # torch.nn.init passes `tensor=` by keyword
        if isinstance(target, torch.Tensor) and target.is_meta:
            if name in VALUE_ONLY_IN_PLACE:
                return target
            if name == "__setitem__":
                return None
        return func(*args, **kwargs)


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside the block, every parameter a module registers *in this thread* is moved to the meta
    device (its initialisation then costs nothing: value-only in-place ops on meta tensors are skipped);
    buffers are untouched.

    Other threads building modules meanwhile are unaffected (the switch is thread-local)."""
    nn.Module.register_parameter = _register_parameter  # type: ignore[method-assign]  # idempotent
    _meta_state.depth = getattr(_meta_state, "depth", 0) + 1
    try:
        with _SkipInPlaceOnMeta():
            yield
    finally:
        _meta_state.depth -= 1


def parameter_device() -> torch.device | None:
    """Where a constructor should create a large parameter: "meta" inside `parameters_on_meta` (in
    this thread), else None (torch's default). Why: a parameter made for real and then moved to meta
    was allocated and filled first (RAM++'s 480 MB `label_embed`: ~0.3 s of zero-filling)."""
    return torch.device("meta") if getattr(_meta_state, "depth", 0) else None


def assign_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """`load_state_dict(state, strict=True)`, assigning the given tensors where `module` holds meta
    tensors (built in `parameters_on_meta`), copying into them otherwise (`assign=False`).

    Assigned tensors take the module's dtype first and are made contiguous, so the model computes
    with exactly the tensors a copy into freshly built parameters would have given (a float16 file
    loaded into a float32 model stays float32, as with a copy); for the usual contiguous float32
    file both are no-ops and the file's own tensors are kept. Raises `RuntimeError` if a meta tensor
    is left (a tensor neither in `state` nor computed by the constructor: a programming error)."""
    own = module.state_dict(keep_vars=True)
    if not any(t.is_meta for t in own.values()):
        module.load_state_dict(state, strict=True)
        return
    fitted = {}
    for key, tensor in state.items():
        target = own.get(key)
        if target is not None and tensor.dtype != target.dtype:
            tensor = tensor.to(target.dtype)
        fitted[key] = tensor.contiguous()
    module.load_state_dict(fitted, strict=True, assign=True)
    left = tensors_left_on_meta(module)
    if left:
        raise RuntimeError(f"{type(module).__name__}: tensors left without values after loading: {', '.join(left[:3])}")


def allocate_parameters(module: nn.Module) -> nn.Module:
    """Gives every meta parameter of `module` uninitialised CPU memory (`torch.empty`); a parameter
    shared under several names stays one parameter. Returns `module`.

    Why: a model whose weights are about to be copied in needs real parameters but not their random
    init; built in `parameters_on_meta` and then allocated, it skips the init without patching
    `torch.nn.init` process-wide (what transformers' `no_init_weights` does), so other threads'
    modules still get theirs."""
    allocated: dict[int, nn.Parameter] = {}
    for owner in module.modules():
        for name, param in owner._parameters.items():
            if param is not None and param.is_meta:
                if id(param) not in allocated:
                    allocated[id(param)] = nn.Parameter(torch.empty(param.shape, dtype=param.dtype),
                                                        requires_grad=param.requires_grad)
                owner._parameters[name] = allocated[id(param)]
    return module


def tensors_left_on_meta(module: nn.Module) -> list[str]:
    """Names of the parameters and buffers of `module` that are still meta tensors."""
    return [name for name, t in [*module.named_parameters(remove_duplicate=False),
                                 *module.named_buffers(remove_duplicate=False)] if t.is_meta]
