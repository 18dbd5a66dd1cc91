"""Tagger forward before/after the lean paths, interleaved in one process, against the GEMM rates.

For each tagger (official size, random weights: the benchmark's cached checkpoints), the stage is
loaded as a run loads it (oneDNN Linears), then rounds alternate, in changing order: timm's Swin blocks
with the decoder's unfused adds and SDPA, image-independent queries recomputed every call ("before":
`lean_swin.LEAN`, `recognition_decoder.FUSED`, `precomputed.PRECOMPUTE` all False), the lean path ("after"), a 2048^3 `a @ b` (MKL) and the same product through oneDNN's linear.
Each is timed by *process CPU time* divided by torch's thread count as well as by wall time: on a shared
machine CPU time is what our threads actually ran, wall time also counts waiting for a core. FLOPs
are counted on the plain path (`bench_jobs.counting_flops`) for each side: "before" everything every
call (the official code), "after" warm, without the reused image-independent work (RAM ~9 GFLOP,
Tag2Text ~4, RAM++ none); each side's rate is of the work it executes. Model forward only (the stage's
`logits` on a preprocessed 384 px tensor); image resizing is not included.

    python benchmarks/bench_taggers.py --models ram,ram_plus,tag2text --rounds 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_machine import machine_line


def _timed(fn) -> tuple[float, float]:
    """(CPU seconds / threads, wall seconds) of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - cpu) / torch.get_num_threads(), time.perf_counter() - wall


def _mode(lean: bool) -> None:
    from recognize.taggers import lean_swin, precomputed, recognition_decoder

    lean_swin.LEAN = lean
    recognition_decoder.FUSED = lean
    precomputed.PRECOMPUTE = lean


def measure(stage_name: str, rounds: int) -> dict[str, float]:
    from bench_jobs import counting_flops, make_stage
    from bench_models import IMAGES, Kit, default_cache

    from recognize.images import load_image

    kit = Kit(quick=False, cache=default_cache())
    stage = make_stage(kit, stage_name)
    stage.ensure_loaded()
    model = stage.model
    pixels = stage.pixels([load_image(IMAGES[0])])
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemm_flops = 2 * n**3
    runs = {
        "before": lambda: (_mode(False), stage.logits(model, pixels)),
        "after": lambda: (_mode(True), stage.logits(model, pixels)),
        "a@b": lambda: a @ b,
        "onednn": lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    with torch.inference_mode():
        _mode(False)
        before_out = stage.logits(model, pixels)
        with counting_flops(reuse=False) as counter:  # as the official code: everything every call
            stage.logits(model, pixels)
        flops = {"before": counter.get_total_flops()}
        _mode(True)
        after_out = stage.logits(model, pixels)  # keeps the image-independent results
        with counting_flops() as counter:  # warm: the FLOPs the lean path executes
            stage.logits(model, pixels)
        flops["after"] = counter.get_total_flops()
        for name in ("a@b", "onednn"):
            for _ in range(3):
                runs[name]()
        for r in range(rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                reps = 4 if name in ("a@b", "onednn") else 1
                for _ in range(reps):
                    times[name].append(_timed(runs[name]))
    _mode(True)
    stage.unload()
    med = {k: (statistics.median(c for c, _ in v), statistics.median(w for _, w in v)) for k, v in times.items()}
    out = {"gflop": flops["before"] / 1e9, "gflop_after": flops["after"] / 1e9, "max_abs_diff": float((after_out - before_out).abs().max()),
           "max_abs": float(before_out.abs().max())}
    for name in ("before", "after"):
        cpu, wall = med[name]
        out[f"{name}_cpu_s"], out[f"{name}_wall_s"] = cpu, wall
        out[f"{name}_gflops_cpu"] = flops[name] / 1e9 / cpu  # each side's rate of the work it does
    out["mkl_gflops_cpu"] = gemm_flops / 1e9 / med["a@b"][0]
    out["onednn_gflops_cpu"] = gemm_flops / 1e9 / med["onednn"][0]
    out["mkl_gflops_wall"] = gemm_flops / 1e9 / med["a@b"][1]
    out["onednn_gflops_wall"] = gemm_flops / 1e9 / med["onednn"][1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="ram,ram_plus,tag2text")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    from recognize import heap

    heap.keep_freed_memory()  # as `recognize run` does when it runs stages (recognize/heap.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    import os

    print(machine_line())
    print("| model | GFLOP before | GFLOP after (executed) | before s (CPU/threads) | after s | speedup | before GFLOP/s | after GFLOP/s | "
          "a @ b GFLOP/s | oneDNN GFLOP/s | after % of a @ b | after % of oneDNN | before % of oneDNN | "
          "wall before / after s | max abs diff (of max) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for name in args.models.split(","):
        r = measure(name, args.rounds)
        print(f"| {name} | {r['gflop']:.1f} | {r['gflop_after']:.1f} | {r['before_cpu_s']:.3f} | {r['after_cpu_s']:.3f} | "
              f"{r['before_cpu_s'] / r['after_cpu_s']:.2f}x | {r['before_gflops_cpu']:.0f} | {r['after_gflops_cpu']:.0f} | "
              f"{r['mkl_gflops_cpu']:.0f} | {r['onednn_gflops_cpu']:.0f} | "
              f"{100 * r['after_gflops_cpu'] / r['mkl_gflops_cpu']:.0f}% | "
              f"{100 * r['after_gflops_cpu'] / r['onednn_gflops_cpu']:.0f}% | "
              f"{100 * r['before_gflops_cpu'] / r['onednn_gflops_cpu']:.0f}% | "
              f"{r['before_wall_s']:.2f} / {r['after_wall_s']:.2f} | {r['max_abs_diff']:.1e} ({r['max_abs']:.1f}) |",
              flush=True)
    load = os.getloadavg()
    print(f"load at the end {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


if __name__ == "__main__":
    main()
