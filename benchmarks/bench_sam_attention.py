"""SAM's image encoder with `LeanAttention` against segment-anything's own `Attention`, interleaved.

    python benchmarks/bench_sam_attention.py --model vit_h --repeats 2

One model (random weights at the official size; compute does not depend on weight values), one
1024x1024 input; the two attention classes take turns on the same modules (swapped per forward), so
a machine that gets busier slows both alike. Prints per way: median seconds, GFLOP/s and its share of
this process's measured fp32 matmul rate (FLOPs counted by `torch.utils.flop_counter`, as
`benchmarks/run.py` counts them), the peak RSS during the forward (VmHWM after a `clear_refs` reset),
and whether the two embeddings are bit-identical.
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


def _peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_h", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from segment_anything.modeling.image_encoder import Attention
    from torch.utils.flop_counter import FlopCounterMode

    from bench_jobs import matmul, reset_peak
    from recognize_sam.attention import LeanAttention
    from recognize_sam.model import build_sam

    encoder = build_sam(args.model, seed=0).image_encoder
    attentions = [m for m in encoder.modules() if isinstance(m, Attention)]
    with torch.no_grad():  # segment-anything zero-initialises the relative-position tables
        for m in attentions:
            m.rel_pos_h.normal_()
            m.rel_pos_w.normal_()
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    ways = {"segment_anything": Attention, "lean": LeanAttention}

    def forward(way: str) -> tuple[torch.Tensor, float, float]:
        for m in attentions:
            m.__class__ = ways[way]
        reset_peak()
        start = time.perf_counter()
        with torch.inference_mode():
            out = encoder(pixels)
        return out, time.perf_counter() - start, _peak_mib()

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        encoder(torch.zeros(1, 3, 1024, 1024))  # also the warm-up
    flops = counter.get_total_flops()
    rate = matmul(quick=False)
    times: dict[str, list[float]] = {way: [] for way in ways}
    peaks: dict[str, list[float]] = {way: [] for way in ways}
    outputs: dict[str, torch.Tensor] = {}
    for i in range(args.repeats):
        for way in (ways if i % 2 == 0 else reversed(list(ways))):
            outputs[way], seconds, peak = forward(way)
            times[way].append(seconds)
            peaks[way].append(peak)
    result = {"model": args.model, "gflop": flops / 1e9, "matmul_gflops": rate["gflops"],
              "threads": torch.get_num_threads(),
              "bit_identical": torch.equal(outputs["lean"], outputs["segment_anything"])}
    for way in ways:
        median = statistics.median(times[way])
        result[way] = {"median_s": median, "runs_s": times[way], "gflops": flops / median / 1e9,
                       "share_of_matmul": flops / median / 1e9 / rate["gflops"], "peak_rss_mib": max(peaks[way])}
    result["speedup"] = result["segment_anything"]["median_s"] / result["lean"]["median_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
