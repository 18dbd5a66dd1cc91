"""SAM's image encoder three ways, interleaved: segment-anything's own, `LeanAttention`, `LeanBlock`.

    python benchmarks/bench_sam_attention.py --model vit_h --repeats 2 [--profile]
    python benchmarks/bench_sam_attention.py --quick      # a 2-block, 32-wide encoder: checks it runs

One model (random weights at the official size; compute does not depend on weight values), one
1024x1024 input; the ways take turns on the same modules (classes swapped per forward), so a machine
that gets busier slows all alike:
- `segment_anything`: segment-anything's `Block` and `Attention`;
- `lean_attention`: its `Block` with `recognize_sam.attention.LeanAttention` (in-place adds and
  softmax, bit for bit; the encoder until issue 11's second step);
- `lean_block`: `recognize_sam.lean_block.LeanBlock` (no work on window padding, fused attention,
  oneDNN linears; within 1e-5 relative), today's default.
Prints per way: median seconds, GFLOP/s and its share of this process's measured fp32 matmul rate
(FLOPs counted by `torch.utils.flop_counter` on segment-anything's encoder, as `benchmarks/run.py`
counts them), the peak RSS during the forward (VmHWM after a `clear_refs` reset), and each way's
largest difference from segment-anything's embedding. The matmul rate is torch's `a @ b` (MKL on
x86), as everywhere in benchmarks/; `matmul_gflops_onednn` is the same 2048^3 product through
oneDNN, which `LeanBlock` uses for its linears: on CPUs where MKL's sgemm is slow (AMD) it is the
truer limit, and `share_of_onednn_matmul` is measured against it.
`--profile` adds one profiled forward per way: the share of self CPU time per kind of op.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: torch profiler op names -> kind of work, for `--profile`
OP_KINDS = {
    "aten::addmm": "linear (GEMM)", "aten::mm": "linear (GEMM)", "mkldnn::_linear_pointwise": "linear (GEMM)",
    "aten::bmm": "attention matmul (bmm)", "aten::_softmax": "softmax",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "fused attention (SDPA)",
    "aten::add": "adds (residual, rel-pos)", "aten::add_": "adds (residual, rel-pos)", "aten::mul": "scale (mul)",
    "aten::gelu": "GELU", "aten::native_layer_norm": "LayerNorm",
    "aten::copy_": "copies (pad, windows, permutes)", "aten::clone": "copies (pad, windows, permutes)",
    "aten::constant_pad_nd": "copies (pad, windows, permutes)", "aten::fill_": "copies (pad, windows, permutes)",
    "aten::index": "rel-pos tables (index)",
    "aten::mkldnn_convolution": "convolutions (patch, neck)", "aten::convolution": "convolutions (patch, neck)",
}


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


#: `--quick`: the tests' tiny encoder (segment-anything's classes, 2 blocks, 32 wide, one global block)
QUICK_CONFIG = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1]}


def _onednn_rate(n: int = 2048, budget: float = 3.0) -> float:
    """fp32 GFLOP/s of an n^3 product through oneDNN's linear: `bench_jobs.onednn_rate`'s median."""
    from bench_jobs import onednn_rate

    return onednn_rate(n, budget)["typical"]


def profile_shares(forward) -> dict[str, float]:
    """Share of self CPU time per kind of op (`OP_KINDS`) in one profiled call of `forward`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward()
    kinds: dict[str, float] = {}
    for event in prof.key_averages():
        kind = OP_KINDS.get(event.key, "other")
        kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total
    total = sum(kinds.values()) or 1.0
    return {kind: round(t / total, 4) for kind, t in sorted(kinds.items(), key=lambda kv: -kv[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_h", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="add one profiled forward per way (op shares)")
    parser.add_argument("--quick", action="store_true", help="a tiny encoder and short matmul probes (tests)")
    args = parser.parse_args()

    from bench_jobs import matmul, reset_peak
    from recognize_sam.attention import LeanAttention
    from recognize_sam.lean_block import LeanBlock, use_segment_anything
    from recognize_sam.model import SamConfig, build_sam
    from segment_anything.modeling.image_encoder import Attention, Block
    from torch.utils.flop_counter import FlopCounterMode

    config = SamConfig(**QUICK_CONFIG) if args.quick else None
    encoder = use_segment_anything(build_sam(args.model, config=config, seed=0).image_encoder)
    blocks = [m for m in encoder.modules() if isinstance(m, Block)]
    with torch.no_grad():  # segment-anything zero-initialises the relative-position tables
        for block in blocks:
            block.attn.rel_pos_h.normal_()
            block.attn.rel_pos_w.normal_()
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    ways = {"segment_anything": (Block, Attention), "lean_attention": (Block, LeanAttention),
            "lean_block": (LeanBlock, LeanAttention)}

    def install(way: str) -> None:
        block_class, attention_class = ways[way]
        for block in blocks:
            block.__class__ = block_class
            block.attn.__class__ = attention_class

    def forward(way: str) -> tuple[torch.Tensor, float, float]:
        install(way)
        reset_peak()
        start = time.perf_counter()
        with torch.inference_mode():
            out = encoder(pixels)
        return out, time.perf_counter() - start, _peak_mib()

    install("segment_anything")  # FLOPs as segment-anything's encoder does them (padding included)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        encoder(torch.zeros(1, 3, 1024, 1024))  # also the warm-up
    flops = counter.get_total_flops()
    rate = matmul(quick=args.quick)
    onednn = _onednn_rate(1024, 0.5) if args.quick else _onednn_rate()
    times: dict[str, list[float]] = {way: [] for way in ways}
    peaks: dict[str, list[float]] = {way: [] for way in ways}
    outputs: dict[str, torch.Tensor] = {}
    for i in range(args.repeats):
        for way in (ways if i % 2 == 0 else reversed(list(ways))):
            outputs[way], seconds, peak = forward(way)
            times[way].append(seconds)
            peaks[way].append(peak)
    reference = outputs["segment_anything"]
    result = {"model": "quick" if args.quick else args.model, "gflop": flops / 1e9, "matmul_gflops": rate["gflops"],
              "matmul_gflops_onednn": onednn, "threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "lean_attention_bit_identical": torch.equal(outputs["lean_attention"], reference)}
    for way in ways:
        median = statistics.median(times[way])
        gflops = flops / median / 1e9
        result[way] = {"median_s": median, "runs_s": times[way], "gflops": gflops,
                       "share_of_matmul": gflops / rate["gflops"], "share_of_onednn_matmul": gflops / onednn,
                       "peak_rss_mib": max(peaks[way]),
                       "max_abs_diff": (outputs[way] - reference).abs().max().item(),
                       "max_abs_reference": reference.abs().max().item()}
    for way in ways:
        result[way]["speedup"] = result["segment_anything"]["median_s"] / result[way]["median_s"]
    if args.profile:
        result["profile_self_cpu_shares"] = {way: profile_shares(lambda way=way: forward(way)) for way in ways}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
