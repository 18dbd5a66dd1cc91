"""Our Grounding DINO against itself with another checkout's `lean_layers`, in one process, interleaved.

For changes to `recognize_grounding_dino/lean_layers.py`: both sides are the benchmark's seeded
random swint_ogc (official-layout checkpoint, `bench_models.Kit`), the same weights, the same photo
(1066x800 after the official resize) and 20-tag caption as `bench_gdino_official.py`; side "this"
is this checkout's model, side "other" the same weights with `lean()` from `--other` (a
lean_layers.py file, e.g. main's). The outputs are compared (max |difference| of logits and
boxes), then the two alternate for `--rounds` forwards each. Timing is process CPU time per forward
(user + system, both threads) beside wall time: on a machine shared with other jobs the CPU time
moves less with the load than wall time does. `--profile` adds one profiled forward per side
(top operators by self time) and this process's fp32 `a @ b` and oneDNN GEMM rates.

    python benchmarks/ab_gdino_lean.py --other /work/main/plugins/recognize-grounding-dino/recognize_grounding_dino/lean_layers.py --rounds 4 --profile
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _profile_table(fn, top: int) -> tuple[float, list[str]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.process_time()
        fn()
        seconds = time.process_time() - start
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    rows = ["| op | calls | self s | share |", "|---|---:|---:|---:|"]
    rows += [f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e6:.2f} | {100 * e.self_cpu_time_total / total:.1f}% |"
             for e in events[:top]]
    return seconds, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--other", type=Path, required=True, help="the other checkout's lean_layers.py")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args(argv)

    from bench_gdino_official import CAPTION_TAGS, machine, ours_forward
    from bench_models import Kit, default_cache, image_paths
    from recognize_grounding_dino.model import Detector
    from recognize_grounding_dino.transforms import preprocess
    from transformers import GroundingDinoForObjectDetection

    from recognize.frame import Frame

    print(json.dumps(machine()), flush=True)
    other_lean = _load_module(args.other, "other_lean_layers")
    kit = Kit(quick=False, cache=default_cache())
    spec = json.loads(kit.official_gdino_spec().read_text())
    this = Detector.load("swint_ogc", spec["checkpoint"], spec["vocab"], config=spec.get("config"))
    plain = GroundingDinoForObjectDetection(this.model.config).eval()
    plain.load_state_dict(this.model.state_dict())
    other = Detector(other_lean.lean(plain), this.tokenizer)
    short, long = kit.gd_size
    pixels = preprocess(Frame(source=str(image_paths(1)[0])).image, short, long)[None]
    caption = ", ".join(CAPTION_TAGS) + "."
    sides = {"this": ours_forward(this, pixels, caption), "other": ours_forward(other, pixels, caption)}
    a, b = (sides[name]() for name in ("this", "other"))
    finite = torch.isfinite(b.logits)
    print(f"same non-finite logits: {torch.equal(finite, torch.isfinite(a.logits))}; max |d logits| "
          f"{(a.logits[finite] - b.logits[finite]).abs().max().item():.3g}, max |d boxes| "
          f"{(a.pred_boxes - b.pred_boxes).abs().max().item():.3g}", flush=True)
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    wall: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(args.rounds):
        for name in (list(sides) if round_ % 2 == 0 else list(sides)[::-1]):
            start_cpu, start_wall = time.process_time(), time.perf_counter()
            sides[name]()
            cpu[name].append(time.process_time() - start_cpu)
            wall[name].append(time.perf_counter() - start_wall)
        print(f"round {round_}: " + ", ".join(f"{n} {cpu[n][-1]:.2f} s CPU / {wall[n][-1]:.2f} s wall" for n in sides)
              + f"; load {os.getloadavg()[0]:.1f}", flush=True)
    median = {name: statistics.median(values) for name, values in cpu.items()}
    print(f"median process CPU s per forward: this {median['this']:.2f}, other {median['other']:.2f}, "
          f"this / other {median['this'] / median['other']:.3f}; median wall s: "
          + ", ".join(f"{n} {statistics.median(v):.2f}" for n, v in wall.items()))
    if args.profile:
        from bench_jobs import matmul

        rates = matmul(False)
        print(f"fp32 `a @ b` {rates['gflops']:.0f} GFLOP/s, oneDNN {rates.get('gflops_onednn', 0):.0f} GFLOP/s")
        for name in ("other", "this"):
            seconds, rows = _profile_table(sides[name], args.top)
            print(f"\n#### {name}: one profiled forward, {seconds:.2f} s process CPU\n")
            print("\n".join(rows))


if __name__ == "__main__":
    main()
