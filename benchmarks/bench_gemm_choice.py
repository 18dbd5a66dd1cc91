"""Which path the exact CPU stages should take on this machine: oneDNN's, or torch's own (MKL's GEMM on x86).

`recognize.onednn_linear.ONEDNN` is chosen once per process by CPU (`onednn_by_default`); this script
measures the choice instead of assuming it. The flag decides more than the GEMM library: with it on, the
lean layers also fuse GELU and residual adds into the products, SAM's global attention runs as two oneDNN
GEMMs instead of SDPA, and the taggers' decoder attention likewise (each asks `onednn_linear.applies_to`).
So what is compared is the whole oneDNN path against the whole torch path, as `RECOGNIZE_ONEDNN=1` / `=0`
would run them.

One process, one stage object per stage (the benchmark's random checkpoints at official sizes,
`bench_models.Kit`), its forward on the first reference photo timed with `ONEDNN` on and off in
alternating order (on-off, off-on, ...), so a machine that slows down slows both sides alike; the result
is the median of the per-round ratios (oneDNN seconds / torch's). The flag is read at every call, so
flipping it switches every lean layer of the loaded model; the prepacked copies made in the oneDNN rounds
stay in memory during torch's (memory is not what is measured here). The feature cache is off
(`RECOGNIZE_FEATURE_CACHE_MB=0`: its key does not include the flag). Grounding DINO's caption cache keeps
the text features of the first call, so both paths share them: the text encoder is not compared. Also
the 2048^3 probes of both GEMMs before and after, and the largest difference between the two paths'
outputs.

    python benchmarks/bench_gemm_choice.py --rounds 6

Prints one line per round and a table at the end; `--out FILE.json` keeps the numbers. The output
difference is the largest over tag scores, box corners (pixels) and scores; "none kept" where neither path
kept a tag above its thresholds (random weights: nothing to compare), "counts differ" where the two paths
kept different numbers of tags or regions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_jobs import load_images, make_stage, matmul, stage_frames
from bench_machine import machine, machine_line
from bench_models import Kit, default_cache, image_paths

from recognize import heap, onednn_linear


def _outputs(frames: list[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The stage's numbers (tag scores, box corners and scores, mask scores) and its masks."""
    values: list[float] = []
    masks: list[np.ndarray] = []
    for frame in frames:
        values += [t.score or 0.0 for t in frame.tags]
        for region in frame.regions:
            values += list(region.box) + [region.score or 0.0, region.mask_score or 0.0]
            if region.mask is not None:
                masks.append(region.mask)
    return np.asarray(values, dtype=np.float64), masks


def _forward(stage: Any, name: str, image: np.ndarray, boxes: int,
             onednn: bool) -> tuple[float, tuple[np.ndarray, list[np.ndarray]]]:
    onednn_linear.ONEDNN = onednn
    frames = stage_frames(name, [image], boxes)
    start = time.perf_counter()
    frames = stage(frames)
    return time.perf_counter() - start, _outputs(frames)


def measure(kit: Kit, name: str, image: np.ndarray, rounds: int) -> dict[str, Any]:
    """`name`'s forward on `image` through both paths, alternating (module doc)."""
    stage = make_stage(kit, name)
    stage.ensure_loaded()
    chosen = onednn_linear.ONEDNN
    outputs = {}
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for onednn in (True, False):  # warm both paths (packing, first-call allocations)
            outputs[onednn] = _forward(stage, name, image, kit.boxes, onednn)[1]
        for r in range(rounds):
            for onednn in ((True, False) if r % 2 == 0 else (False, True)):
                times[onednn].append(_forward(stage, name, image, kit.boxes, onednn)[0])
            print(f"  {name} round {r + 1}: oneDNN {times[True][-1]:.2f} s, torch {times[False][-1]:.2f} s",
                  flush=True)
    finally:
        onednn_linear.ONEDNN = chosen
    (numbers_a, masks_a), (numbers_b, masks_b) = outputs[True], outputs[False]
    same_size = numbers_a.shape == numbers_b.shape and len(masks_a) == len(masks_b)
    diff = float(np.abs(numbers_a - numbers_b).max()) if same_size and numbers_a.size else None
    pixels = (max((float(np.mean(a != b)) for a, b in zip(masks_a, masks_b)), default=0.0)
              if same_size else None)
    ratios = [a / b for a, b in zip(times[True], times[False])]
    return {"stage": name, "model": kit.describe(name), "onednn_s": times[True], "torch_s": times[False],
            "ratios": ratios, "ratio_median": statistics.median(ratios), "max_output_difference": diff,
            "max_mask_pixels_differing": pixels, "outputs_same_size": same_size}


def _probes(quick: bool) -> dict[str, float]:
    rates = matmul(quick=quick)
    return {"fp32": rates["gflops"], "onednn": rates.get("gflops_onednn", float("nan"))}


def _span(seconds: list[float]) -> str:
    return f"{min(seconds):.2f}-{max(seconds):.2f}"


def _difference(row: dict[str, Any]) -> str:
    if not row["outputs_same_size"]:
        return "counts differ"
    return "none kept" if row["max_output_difference"] is None else f"{row['max_output_difference']:.1e}"


def _pixels(row: dict[str, Any]) -> str:
    return "–" if row["max_mask_pixels_differing"] is None else f"{row['max_mask_pixels_differing']:.1e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default="ram,ram_plus,tag2text,grounding_dino,sam")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny models and probes (for the tests)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    os.environ["RECOGNIZE_FEATURE_CACHE_MB"] = "0"  # read at each stage call: no reuse across the flip
    kit = Kit(quick=args.quick, cache=default_cache())
    print(machine_line(), flush=True)
    heap.keep_freed_memory()  # as `recognize run` and the stage table do when they run stages
    probes = [_probes(args.quick)]
    image = load_images(image_paths(1))[0]  # decoded once for every stage
    rows = [measure(kit, name.strip(), image, args.rounds) for name in args.stages.split(",") if name.strip()]
    probes.append(_probes(args.quick))
    print("\n| stage | rounds | oneDNN s | torch GEMM s | ratio (oneDNN / torch, median) | max output difference "
          "| mask pixels differing |")
    print("|---|---:|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['stage']} | {len(row['onednn_s'])} | {_span(row['onednn_s'])} | {_span(row['torch_s'])} "
              f"| {row['ratio_median']:.3f} | {_difference(row)} | {_pixels(row)} |")
    print("\n2048^3 probes, GFLOP/s (start, end): "
          + ", ".join(f"`a @ b` {p['fp32']:.0f} / oneDNN {p['onednn']:.0f}" for p in probes))
    if args.out:
        args.out.write_text(json.dumps({"machine": machine(), "torch_threads": torch.get_num_threads(),
                                        "probes": probes, "stages": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
