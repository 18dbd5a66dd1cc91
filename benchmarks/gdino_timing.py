"""Timing and profiling helpers shared by our side and the official worker (`bench_gdino_official.py`).

Imported in two processes: the benchmark's (transformers 5, our classes) and the official worker's
(rf-groundingdino in its own venv), so it uses nothing but torch.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

#: Module classes whose inclusive time the profile reports, per implementation: the same parts
#: of the network (Swin, BERT, the encoder's image/text/fusion layers, the decoder) on both sides.
PARTS = {
    "backbone (swin + positions)": ("Joiner", "GroundingDinoConvModel"),
    "swin blocks": ("SwinTransformerBlock", "SwinLayer", "LeanSwinLayer"),
    "bert": ("BertModelWarper", "BertModel", "CachedBertModel"),
    "encoder deformable layers": ("DeformableTransformerEncoderLayer", "GroundingDinoDeformableLayer",
                                  "LeanGroundingDinoDeformableLayer"),
    "encoder text layers": ("TransformerEncoderLayer", "GroundingDinoTextEnhancerLayer"),
    "encoder fusion layers": ("BiAttentionBlock", "GroundingDinoFusionLayer"),
    "decoder layers": ("DeformableTransformerDecoderLayer", "GroundingDinoDecoderLayer"),
    "deformable attention (enc+dec)": ("MultiScaleDeformableAttention", "GroundingDinoMultiscaleDeformableAttention",
                                       "LeanGroundingDinoMultiscaleDeformableAttention"),
}


def part_times(model: torch.nn.Module, fn: Callable[[], Any]) -> dict[str, float]:
    """Inclusive wall seconds per part (PARTS) during `fn()`, from forward pre/post hooks (a module
    inside another of the same part is not counted twice)."""
    wanted = {name: part for part, names in PARTS.items() for name in names}
    totals: dict[str, float] = defaultdict(float)
    starts: dict[int, float] = {}
    depth: dict[str, int] = defaultdict(int)
    handles = []
    for module in model.modules():
        part = wanted.get(type(module).__name__)
        if part is None:
            continue

        key = id(module)

        def pre(mod, _args, key=key, part=part):
            depth[part] += 1
            starts[key] = time.perf_counter()

        def post(mod, _args, _out, key=key, part=part):
            depth[part] -= 1
            elapsed = time.perf_counter() - starts.pop(key)
            if depth[part] == 0:
                totals[part] += elapsed

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        start = time.perf_counter()
        fn()
        totals["total"] = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    return dict(totals)


def op_table(fn: Callable[[], Any], top: int = 15) -> list[dict[str, Any]]:
    """The `top` operators by self CPU time during `fn()` (torch.profiler), with their share."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "calls": e.count, "self_s": e.self_cpu_time_total / 1e6,
             "share": e.self_cpu_time_total / total} for e in events[:top]]


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
