"""Linear layers on CPU through oneDNN, with GELU or the residual add fused into the product.

torch's `nn.Linear` on CPU calls MKL's sgemm. On CPUs that MKL does not treat as its own (AMD EPYC
here: `torch.backends.cpu.get_cpu_capability()` says AVX512, yet MKL's sgemm ran at about half of
oneDNN's on SAM's shapes), oneDNN's fp32 GEMM is much faster, and it can apply the bias, GELU (erf)
or a residual add while the output tile is still in cache, instead of another pass over memory.
`torch.ops.mkldnn._linear_pointwise` is the op torch's own compiler (inductor) emits for this.
Measured on this project's AMD EPYC machine (2026-12-01, load average ~2): a 2048^3 product at 418-434
GFLOP/s through oneDNN against 200-203 through `a @ b` (MKL), in one process; `benchmarks/run.py` records
both rates with every run (`benchmarks/README.md`, "% of oneDNN matmul").

Which CPUs (`ONEDNN`, chosen at import): oneDNN where torch's CPU capability is AVX512 (AMX CPUs report
it too), torch's own GEMM elsewhere (MKL on x86 CPUs with AVX2 and below). Why: on an AVX2-only AMD EPYC
(2026-12-03, 2 cores, `avx avx2 fma`; interleaved in one process, median of per-round ratios) oneDNN's fp32
GEMM ran at or below MKL's (2048^3: 123-151 against 133-178 GFLOP/s, both probes noisy) and whole forwards took longer
through oneDNN: RAM 1.12x, Tag2Text 1.13x, SAM vit_h (encoder + 8 boxes) 1.13x the time; Grounding DINO
0.96x (within the noise; `benchmarks/README.md`, "Which GEMM on which CPU"). On an Intel Xeon with AVX-512
and AMX, where MKL runs its AVX-512 kernels (its products alone beat oneDNN's plain ones, not always its
packed ones; 2026-12-05, `benchmarks/bench_gemm_choice.py`, whole forwards, 6 rounds, median of oneDNN ÷ torch per round): Grounding
DINO 0.91, RAM / RAM++ / Tag2Text 1.00-1.01, SAM 1.04 (0.86-1.12 per round; 1.00 in a second check), so oneDNN
stays there too (`benchmarks/README.md`, "A full run on an Intel Xeon with AMX").
`RECOGNIZE_ONEDNN=1` takes oneDNN on every CPU, `=0` torch's GEMM everywhere (`auto`, the default: by CPU).

Same arithmetic (fp32 products and sums, erf GELU, one add), another summation order: results
differ from `nn.Linear` in the last bits (~1e-6 relative), well inside the parity tolerances
against the official code. `linear` is the fused call (SAM's `LeanBlock`); `use_onednn_linears`
turns every plain `nn.Linear` of a model into a `OneDNNLinear` (same parameters and state-dict
keys), which the exact path of each built-in stage applies at load. Falls back to plain torch off
CPU, for other dtypes, under autocast (fast modes keep their bf16 GEMMs), for tensor-subclass
(quantized) weights, when autograd would need to track the op, or if this torch build lacks the op
or the fused variant (ReLU, GELU, residual add: each probed once, so a build without one falls back
for that one only instead of raising at first use).

Prepacked weights (`PACKED`): a layer's weight is reordered once into oneDNN's blocked layout
(`torch.ops.mkldnn._reorder_linear_weight`, what inductor's freezing pass does) and that copy is
what every later call multiplies by. Why: given a plain row-major weight, oneDNN packs it into that
layout again inside every call. Measured on this project's AMD EPYC (2026-12-02, interleaved, median
of 6 rounds): the products 4-12% faster on the models' shapes (SAM's 4,096 x 1,280 -> 5,120 +4%,
Swin-L's 576 x 768 -> 3,072 +10%, the taggers' decoder FFN 4,585 x 768 -> 3,072 +12%), whole
forwards RAM +9%, Tag2Text +7%, SAM's vit_h encoder +8%, with the very same bits (max difference 0;
`benchmarks/README.md`, "Prepacked oneDNN weights"). A single input row (M = 1) is multiplied by the
plain weight: there the packed copy gave other last bits (`_weight_for`). Memory: the packed copy
is anonymous memory the size of the weight, so once it exists the weight's own pages leave RSS
where they are a memory-mapped checkpoint (`recognize.resident_weights.unmap_pages`; they come back
from the page cache if anything reads the weight again). Where they are not (random or converted
weights), the weight is held twice.
Where copies are made: in a pipeline of one stage (a tagging recipe, a `Pipeline` of one tagger), in
a stage called directly (the benchmark's stage table), and in `recognize serve`, whose stages run
side by side and keep their models resident anyway (there the copy replaces the model's mapped
pages; the server's memory with copies was not measured). In a pipeline of several stages (tag ->
box -> mask) the engines suspend packing for the run (`suspend_packing`, from
`recognize.engines.batches.apply_stages`) and resume it when the run ends (`resume_packing`), also
for a tagger followed by a filter. Why: a copy is anonymous memory; a chain releases each idle
model's mapped weights between stages to bound its peak, and the copies cannot leave RSS that way.
Measured on the benchmark's chain (4 photos, batch 2): packing each stage again at every batch made
SAM's encoder ~7.6% faster from its second batch on, but the copies' pieces in the heap (SAM's 2.4 GB
in 6-26 MB pieces fit no hole the taggers' smaller copies left) raised the chain's peak RSS from ~5.5
to 6.2-6.4 GB, over its 6 GB budget; packing only until the first release left 1.3 GB of holes and a
6.6 GB peak (`benchmarks/README.md`, "Prepacked oneDNN weights"). The suspension is one flag per
process: two runs in one process at once (threads) share it, and the first to end lifts it.
`RECOGNIZE_PACKED_WEIGHTS=0` turns packing off. A copy is made again when its weight changes:
another tensor assigned, an in-place change (the weight's version counter), new data or another
shape. Not seen: a write through `weight.data` (a tensor with a version counter of its own; use
`torch.no_grad()` and the weight itself). Inference tensors (no version counter: a model built
under `torch.inference_mode`) are not packed.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ONEDNN", "ONEDNN_ENV", "PACKED", "PACKED_ENV", "OneDNNLinear", "applies_to", "available", "drop_packed",
           "linear", "linear_weights", "onednn_by_default", "packed_bytes", "resume_packing", "suspend_packing",
           "use_onednn_linears"]

#: "1": oneDNN's GEMM on every CPU; "0": torch's own (MKL) everywhere; unset or "auto": by CPU (module doc)
ONEDNN_ENV = "RECOGNIZE_ONEDNN"
#: CPUs (torch's capability names) where oneDNN's fp32 GEMM is the default (module doc: faster than MKL on AMD)
ONEDNN_CAPABILITIES = ("AVX512",)


def onednn_by_default(setting: str | None = None, capability: str | None = None) -> bool:
    """Whether this process multiplies through oneDNN: `RECOGNIZE_ONEDNN` if it says 1/0, else whether
    torch's CPU capability (`torch.backends.cpu.get_cpu_capability()`) is one of `ONEDNN_CAPABILITIES`.
    An unknown setting counts as "auto", with a warning naming it."""
    setting = (os.environ.get(ONEDNN_ENV, "auto") if setting is None else setting).strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    if setting not in ("", "auto"):
        import logging

        logging.getLogger(__name__).warning("%s=%r is not 1, 0 or auto; choosing by CPU", ONEDNN_ENV, setting)
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    return capability in ONEDNN_CAPABILITIES


#: Use oneDNN where it applies (`onednn_by_default`); also a switch for benchmarks and tests (False: plain torch).
ONEDNN = onednn_by_default()
#: set to 0 to multiply by the plain weight in every call (no prepacked copies; module doc)
PACKED_ENV = "RECOGNIZE_PACKED_WEIGHTS"
#: Multiply by a prepacked copy of each layer's weight (module doc); False: the plain weight every call.
PACKED = os.environ.get(PACKED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
#: the fused variants `linear` uses: the plain product, ReLU, erf GELU, a residual add
VARIANTS = ("none", "relu", "gelu", "add")
_available: dict[str, bool] | None = None


@dataclass(frozen=True)
class _Packed:
    """A weight's prepacked copy and what the weight was when it was made (a change makes it stale)."""

    source: weakref.ref
    version: int
    data_ptr: int
    shape: tuple[int, ...]
    tensor: torch.Tensor


_packed: dict[int, _Packed] = {}  # id(weight) -> its packed copy; an entry leaves with its weight
_packed_lock = threading.RLock()  # re-entrant: a weight's weakref callback (`_forget`) may run
# on a thread that holds it, when the garbage collector runs inside `drop_packed` or `_packed_or_plain`
_suspended = False  # set by `suspend_packing` (a chain's weights are being released): no new copies


def linear(layer: nn.Linear, x: torch.Tensor, gelu: bool = False, residual: torch.Tensor | None = None,
           relu: bool = False) -> torch.Tensor:
    """`layer(x)`, then exact (erf) GELU if `gelu` or ReLU if `relu`, then `+ residual` if given
    (an activation and a residual are not fused together)."""
    if (gelu or relu) and residual is not None:
        raise ValueError("linear: an activation and a residual cannot be fused together")
    if gelu and relu:
        raise ValueError("linear: gelu and relu are exclusive")
    variant = "add" if residual is not None else "gelu" if gelu else "relu" if relu else "none"
    if _onednn_applies_to(layer.weight, x, residual, variant):
        weight = _weight_for(layer.weight, x)
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, layer.bias, "add")
        if gelu:
            return torch.ops.mkldnn._linear_pointwise(x, weight, layer.bias, "gelu", [], "none")
        if relu:
            return torch.ops.mkldnn._linear_pointwise(x, weight, layer.bias, "relu", [], "")
        return torch.ops.mkldnn._linear_pointwise(x, weight, layer.bias, "none", [], "")
    out = F.linear(x, layer.weight, layer.bias)  # a fresh tensor: the activation may overwrite it
    if gelu:
        torch.ops.aten.gelu_(out)  # F.gelu's bits, without a second activation-sized buffer
    if relu:
        out.relu_()
    return out if residual is None else out.add_(residual)


def linear_weights(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   packed: bool = False) -> torch.Tensor:
    """`F.linear(x, weight, bias)` through oneDNN where it applies (weights not held by an `nn.Linear`,
    e.g. Grounding DINO's Swin with q/k/v concatenated into one product). `packed`: `weight` is kept
    and used again (not a per-call tensor such as attention's keys), so a prepacked copy pays off."""
    if _onednn_applies_to(weight, x):
        return torch.ops.mkldnn._linear_pointwise(x, _weight_for(weight, x) if packed else weight, bias,
                                                  "none", [], "")
    return F.linear(x, weight, bias)


def _weight_for(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """What `x` is multiplied by: `weight`'s packed copy (`_packed_or_plain`), except for a single row
    (M = 1): oneDNN multiplies one row by a plain weight with another kernel than by the packed copy,
    which rounds the last bits differently (torch 2.14, every variant and shape tried; 2 rows and more
    gave the same bits), so one row keeps the plain weight's bits and makes no copy."""
    return weight if x.numel() == x.shape[-1] else _packed_or_plain(weight)


def _packed_or_plain(weight: torch.Tensor) -> torch.Tensor:
    """`weight`'s prepacked copy, made at first use and again after the weight changed; `weight`
    itself where packing is off or this torch build cannot pack, and for an inference tensor (made
    under `torch.inference_mode`, e.g. a model built inside it): it has no version counter, so a
    change made to it in place could not be told from the packed copy (and `_version` raises)."""
    if not PACKED or _suspended or weight.is_inference() or not available("packed"):
        return weight
    key = id(weight)
    with _packed_lock:
        entry = _packed.get(key)
    if (entry is not None and entry.source() is weight and entry.version == weight._version
            and entry.data_ptr == weight.data_ptr() and entry.shape == tuple(weight.shape)):
        return entry.tensor
    plain = weight.detach()
    packed = torch.ops.mkldnn._reorder_linear_weight(plain if plain.is_contiguous() else plain.contiguous())
    entry = _Packed(weakref.ref(weight, lambda _, key=key: _forget(key)), weight._version, weight.data_ptr(),
                    tuple(weight.shape), packed)
    with _packed_lock:
        _packed[key] = entry
    from recognize import resident_weights

    resident_weights.unmap_pages(weight)  # only the packed copy is read from now on
    return packed


def _forget(key: int) -> None:
    """A weight died: its entry goes (unless the id was already reused by a newer weight's entry)."""
    with _packed_lock:
        entry = _packed.get(key)
        if entry is not None and entry.source() is None:
            del _packed[key]


def drop_packed() -> int:
    """Free every prepacked weight copy (each is made again at its layer's next call); returns the
    bytes they held (`suspend_packing`, the benchmark after its plain-path FLOP count)."""
    with _packed_lock:
        entries = list(_packed.values())
        _packed.clear()
    return sum(_nbytes(entry.tensor) for entry in entries)


def suspend_packing() -> int:
    """Drop every packed copy and make none until `resume_packing()` (module doc: a chain whose
    stages take turns); returns the bytes freed."""
    global _suspended
    _suspended = True
    return drop_packed()


def resume_packing() -> None:
    """Packing again from the next call (the engines call this when a run ends)."""
    global _suspended
    _suspended = False


def packed_bytes() -> int:
    """Bytes held by prepacked weight copies now."""
    with _packed_lock:
        entries = list(_packed.values())
    return sum(_nbytes(entry.tensor) for entry in entries if entry.source() is not None)


def _nbytes(tensor: torch.Tensor) -> int:
    return int(torch.ops.mkldnn._nbytes(tensor)) if tensor.is_mkldnn else tensor.untyped_storage().nbytes()


class OneDNNLinear(nn.Linear):
    """An `nn.Linear` whose CPU fp32 inference goes through oneDNN (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self, x)


def use_onednn_linears(model: nn.Module) -> int:
    """Turn every plain `nn.Linear` in `model` into a `OneDNNLinear`, in place; returns how many.

    Only the class changes (parameters, buffers, hooks and state-dict keys stay), so loading,
    `.to()` and quantization work as before; subclasses of `nn.Linear` are left alone, since
    their forward may do more than a product.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDNNLinear
            count += 1
    return count


def applies_to(weight: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether `linear_weights(x, weight)` runs through oneDNN (callers that pick a whole different
    computation for the oneDNN case, e.g. attention as two GEMMs, ask first)."""
    return _onednn_applies_to(weight, x)


def _onednn_applies_to(weight: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None = None,
                       variant: str = "none") -> bool:
    tracked = torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad
                                           or (residual is not None and residual.requires_grad))
    return (ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and x.numel() > 0
            and type(weight) in (torch.Tensor, nn.Parameter)
            and not tracked and available(variant))


def available(variant: str = "none") -> bool:
    """Whether this torch build runs the fused op's `variant` (one of `VARIANTS`, or "packed": a
    prepacked weight). Every variant is checked at the first call, once, on a tiny input against
    plain torch."""
    global _available
    if _available is None:
        _available = _probe()
    return _available.get(variant, False)


def _probe() -> dict[str, bool]:
    cpu = {"dtype": torch.float32, "device": "cpu"}
    x, w, b = torch.ones(2, 3, **cpu), torch.ones(4, 3, **cpu), torch.zeros(4, **cpu)
    w[1] = -1.0  # a negative output column, for the ReLU
    residual = torch.full((2, 4), 0.5, **cpu)
    plain = F.linear(x, w, b)
    runs = {
        "none": (lambda op: op(x, w, b, "none", [], ""), plain),
        "relu": (lambda op: op(x, w, b, "relu", [], ""), F.relu(plain)),
        "gelu": (lambda op: op(x, w, b, "gelu", [], "none"), F.gelu(plain)),
        "add": (lambda op: op.binary(x, residual, w, b, "add"), plain + residual),
        "packed": (lambda op: op(x, torch.ops.mkldnn._reorder_linear_weight(w), b, "none", [], ""), plain),
    }
    found = {}
    for variant, (run, expected) in runs.items():
        try:
            found[variant] = bool(torch.backends.mkldnn.is_available()) and torch.allclose(
                run(torch.ops.mkldnn._linear_pointwise), expected, rtol=1e-5, atol=1e-6)
        except (RuntimeError, AttributeError, NotImplementedError, TypeError):
            found[variant] = False
    return found
