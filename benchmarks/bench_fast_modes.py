"""Fast modes of SAM's image encoder side by side with the exact path, interleaved in one process.

    python benchmarks/bench_fast_modes.py --model vit_b --repeats 2

Random weights at the official size (compute does not depend on weight values); one 1024x1024
input. The modes take turns (exact, bf16 autocast, int8, exact, ...) so a machine that gets busier
slows all alike; prints median seconds and the ratio exact / mode, plus how close each mode's
embedding is to the exact one (max abs difference, relative to the exact embedding's max).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--modes", default="float32,bfloat16,int8")
    args = parser.parse_args()

    from recognize.fast_modes import autocast, quantize_linear_int8
    from recognize_sam.model import build_sam

    exact = build_sam(args.model, seed=0).image_encoder
    models = {"float32": exact, "bfloat16": exact}
    if "int8" in args.modes:
        models["int8"] = quantize_linear_int8(build_sam(args.model, seed=0).image_encoder)
    pixels = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {mode: [] for mode in args.modes.split(",")}
    outputs: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for mode in times:
            with torch.inference_mode(), autocast("cpu", "bfloat16" if mode == "bfloat16" else "float32"):
                start = time.perf_counter()
                outputs[mode] = models[mode](pixels).float()
                times[mode].append(time.perf_counter() - start)
    reference = outputs["float32"]
    scale = float(reference.abs().max())
    report = {
        "model": args.model, "threads": torch.get_num_threads(),
        "median_s": {m: statistics.median(t) for m, t in times.items()},
        "exact_over_mode": {m: statistics.median(times["float32"]) / statistics.median(t) for m, t in times.items()},
        "max_abs_diff_rel": {m: float((outputs[m] - reference).abs().max()) / scale for m in times},
        "runs_s": times,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
