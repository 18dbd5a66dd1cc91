"""Opt-in fast modes: lower-precision compute, int8 Linear layers, a cap on regions per image.

Why they exist: the exact fp32 path cannot go far below its FLOP limit (SAM vit_h is ~6 TFLOP per
photo), so trading a little fidelity for speed must be possible, but never by accident. Every fast
mode is a stage parameter whose default is the exact path; `active_fast_modes(stage)` reads them
back so a run can say which are on (`summary.json` -> `fast_modes`, one line on stderr), and
`recognize eval compare` measures what a mode changes on the user's own photos.

Stage parameters recognised here (any stage may declare them; the default is the exact path):
- `dtype`: `float32` (exact), `bfloat16` or `float16`. SAM and Grounding DINO run under
  `torch.autocast` (weights stay fp32; matmuls and convolutions run in the low precision,
  reductions and norms in fp32); taggers cast their weights (`TaggerParams.dtype`). bf16 pays off
  on GPUs and on CPUs with bf16 instructions (`amx_bf16` or `avx512_bf16` in /proc/cpuinfo: 4x fp32 on
  an AVX-512 EPYC); on CPUs without them bf16 matmuls were measured SLOWER than fp32 (`CPU_FLAGS_FOR`).
- `quantize`: `none` (exact) or `int8`: torchao's dynamic int8 activation + int8 weight
  quantisation of the heavy `nn.Linear` layers (CPUs with VNNI / AMX-int8, and GPUs).
- `max_regions`: keep the N best-scoring regions of a frame; the others go to `frame.dropped`
  with `REASON_MAX_REGIONS`, so a capped result can always be audited.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal

from recognize.errors import RecognizeError
from recognize.frame import Drop, Frame

Precision = Literal["float32", "bfloat16", "float16"]
Quantization = Literal["none", "int8"]

REASON_MAX_REGIONS = "over max_regions (lower score)"

#: parameter name -> its exact (default) value; any other value is a fast mode
EXACT_VALUES: dict[str, Any] = {"dtype": "float32", "quantize": "none", "max_regions": None}


def active_fast_modes(stage: Any) -> dict[str, Any]:
    """The fast-mode parameters of `stage` that are not at their exact value (`{}` on the exact path)."""
    params = getattr(stage, "params", None)
    fields = type(params).model_fields if params is not None else {}
    return {name: getattr(params, name) for name, exact in EXACT_VALUES.items()
            if name in fields and getattr(params, name) != exact}


def describe_fast_modes(modes: dict[str, dict[str, Any]]) -> str:
    """One line for stderr: `fast modes on (outputs may differ from the exact path): sam dtype=bfloat16`."""
    parts = [f"{stage} " + " ".join(f"{k}={v}" for k, v in values.items()) for stage, values in modes.items()]
    return "fast modes on (outputs may differ from the exact path): " + "; ".join(parts)


#: (parameter, value) -> the CPU flags (Linux /proc/cpuinfo) with the instructions that make that fast mode
#: faster than the exact fp32 path on a CPU. Without them bf16 matmuls ran slower than fp32 (68 against 112
#: GFLOP/s, issue 11; 0.3 against 145 on an AVX2-only EPYC), and the int8 chain on that CPU had not finished
#: one batch of 2 photos after 20 minutes (exact: ~51 s per photo): `benchmarks/README.md`.
CPU_FLAGS_FOR: dict[tuple[str, Any], tuple[str, ...]] = {
    ("dtype", "bfloat16"): ("amx_bf16", "avx512_bf16"),
    ("dtype", "float16"): ("amx_fp16", "avx512_fp16"),
    ("quantize", "int8"): ("amx_int8", "avx512_vnni", "avx_vnni"),
}


def cpu_flags() -> frozenset[str] | None:
    """The first CPU's flags from /proc/cpuinfo; None where there is none (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


def slow_on_this_cpu(stages: list[Any], flags: frozenset[str] | None = None) -> str | None:
    """One warning line naming the fast modes of `stages` running on the CPU that this CPU has no
    instructions for (`CPU_FLAGS_FOR`): opted in for speed, they would run slower than the exact path.
    None when there is nothing to say, or the flags cannot be read (`flags`: default this machine's).
    Judged on the machine that calls it: under `--engine ray` on a cluster the workers' CPUs may differ."""
    from recognize.stage import resolve_device

    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return None
    slow = []
    for stage in stages:
        device = getattr(getattr(stage, "params", None), "device", None) or "cpu"
        if resolve_device(str(device)) != "cpu":
            continue
        for name, value in active_fast_modes(stage).items():
            needed = CPU_FLAGS_FOR.get((name, value))
            if needed and not flags.intersection(needed):
                slow.append(f"{stage.name} {name}={value} (needs {' or '.join(needed)})")
    if not slow:
        return None
    return ("warning: this CPU lacks the instructions these fast modes need, so they will likely run slower "
            "than the exact path: " + "; ".join(slow))


def torch_dtype(name: Precision) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast(device: Any, dtype: Precision) -> contextlib.AbstractContextManager[Any]:
    """`torch.autocast` for a low `dtype` on `device`; a no-op context on the exact float32 path."""
    if dtype == "float32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=torch.device(device).type, dtype=torch_dtype(dtype))


def exact_float32_on_cuda(params: Any) -> bool:
    """Keep an exact stage on CUDA in full float32: torch lets cuDNN's convolutions round float32 inputs to
    TF32 (10 bits of mantissa, ~1e-3 relative) by default, although it keeps its matmuls in float32. The
    patch embeddings of the taggers' Swin, SAM's ViT and Grounding DINO's backbone are convolutions, so
    that default would move the exact path's outputs far outside the parity tolerances on the GPUs that
    have TF32 (Ampere and later). Called when a stage loads (`Stage.ensure_loaded`, before `load`): for a
    stage on CUDA whose `dtype` is float32 or that has none (a wrapper such as `tiled`; its inner stage
    decides for itself when it loads), it turns TF32 off for cuDNN, process-wide, as the setting cannot be
    per thread. A stage in a low-precision mode does not turn it off, and it loses nothing when another
    stage has: its convolutions run in bf16/fp16 (autocast or cast weights), not in TF32. Returns whether
    it applied."""
    dtype = getattr(params, "dtype", "float32")
    device = getattr(params, "device", None)
    if dtype != "float32" or device is None:
        return False
    from recognize.device_copies import is_cuda
    from recognize.stage import resolve_device

    if not is_cuda(resolve_device(str(device))):
        return False
    import torch

    torch.backends.cudnn.allow_tf32 = False
    return True


def quantize_linear_int8(module: Any, include: Callable[[str], bool] | None = None) -> Any:
    """Replace the weights of `module`'s `nn.Linear` layers (those whose qualified name `include`
    accepts) by torchao int8 tensors with dynamic int8 activations; in place, returns `module`.

    Each weight is quantised once, and Linear layers that shared it share the int8 tensor (a Linear
    tied to another kind of layer, an embedding, is not kept tied). Why: models tie Linear layers, and
    torchao's `quantize_` walks every path to a layer. transformers 5.17's Grounding DINO reaches its box
    heads both as `bbox_embed` and as `model.decoder.bbox_embed` (the same modules), and torchao fails
    on the second visit, quantising an int8 weight again (`Int8Tensor` has no `aten.view`); later
    releases tie the decoder's six box heads to one set of weights in distinct modules, which it would
    quantise into six int8 copies that no longer share anything."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise RecognizeError("quantize: int8 needs torchao: pip install 'torchao>=0.18'") from None
    import torch

    # the ids are read only here, while every float weight is held by its layers
    owners: dict[int, torch.nn.Linear] = {}  # id of a float weight -> the one layer that quantises it
    sharers: list[tuple[torch.nn.Linear, torch.nn.Linear]] = []  # (layer, owner of its weight)
    for name, layer in module.named_modules(remove_duplicate=False):
        if isinstance(layer, torch.nn.Linear) and (include is None or include(name)):
            owner = owners.setdefault(id(layer.weight), layer)
            if owner is not layer:
                sharers.append((layer, owner))
    todo = {id(layer) for layer in owners.values()}

    def wanted(layer: Any, _name: str) -> bool:  # each owner once, however many paths reach it
        if id(layer) not in todo:
            return False
        todo.discard(id(layer))
        return True

    quantize_(module, Int8DynamicActivationInt8WeightConfig(), filter_fn=wanted)
    for layer, owner in sharers:
        if type(owner.weight.data) is torch.Tensor:  # torchao swapped the layer instead of its weight
            raise RuntimeError(f"torchao left a shared weight in float ({type(owner).__name__})")
        layer.weight = owner.weight
    return module


def cap_regions(frame: Frame, max_regions: int | None, stage: str) -> int:
    """Keep the `max_regions` best-scoring regions of `frame` (ties: earlier first), in their order;
    the rest are recorded in `frame.dropped`. Returns how many were dropped."""
    if max_regions is None or len(frame.regions) <= max_regions:
        return 0
    order = sorted(range(len(frame.regions)),
                   key=lambda i: -frame.regions[i].score if frame.regions[i].score is not None else float("inf"))
    keep = set(order[:max_regions])
    kept, dropped = [], 0
    for i, region in enumerate(frame.regions):
        if i in keep:
            kept.append(region)
        else:
            frame.dropped.append(Drop(item="region", tag=region.tag, stage=stage, reason=REASON_MAX_REGIONS,
                                      value=region.score, box=region.box))
            dropped += 1
    frame.regions = kept
    return dropped

