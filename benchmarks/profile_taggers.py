"""Where the time goes in one tagger forward (RAM, RAM++, Tag2Text), grouped by module and operator.

Official sizes with random weights (the benchmark's cached checkpoints, `bench_models.Kit`), built by
our stages exactly as a run builds them (oneDNN Linears; lean Swin blocks, fused decoder and reused
image-independent results unless `--plain`). Prints,
per model: its FLOPs (counted on the plain torch path, `bench_jobs.counting_flops`: the profiler and
`FlopCounterMode` have no formula for oneDNN's linear; on a warm call: the FLOPs executed, without the
reused image-independent work unless `--plain`), the process CPU time of the profiled forward,
the GFLOP/s against `a @ b` (MKL) and oneDNN's fp32 GEMM measured in the same process, then the
self CPU time per module group and the top operators.

    python benchmarks/profile_taggers.py --models ram,ram_plus,tag2text [--plain]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_machine import machine_line

_GROUP = "## "


def _group_of(name: str) -> str:
    """`visual_encoder.layers.2.blocks.5.attn.qkv` -> `swin.layers.2.attn`: one row per stage and part."""
    parts = name.split(".")
    if parts[0] == "visual_encoder":
        if len(parts) >= 5 and parts[1] == "layers" and parts[3] == "blocks":
            return f"swin.layers.{parts[2]}.{parts[5] if len(parts) > 5 else 'block'}"
        if len(parts) >= 4 and parts[1] == "layers":
            return f"swin.layers.{parts[2]}.{parts[3]}"
        return "swin." + ".".join(parts[1:2])
    return ".".join(parts[:3]) if parts[0] == "tagging_head" else parts[0]


def _hooks(model: torch.nn.Module) -> list:
    """Forward hooks opening a profiler range per leaf-ish module group (the innermost range wins)."""
    handles = []
    for name, module in model.named_modules():
        if not name or name == "visual_encoder":
            continue
        label = _GROUP + _group_of(name)
        ranges: list = []

        def pre(_m, _args, label=label, ranges=ranges):
            r = torch.profiler.record_function(label)
            r.__enter__()
            ranges.append(r)

        def post(_m, _args, _out, ranges=ranges):
            ranges.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def _tables(prof, top: int) -> str:
    by_group: dict[str, float] = collections.Counter()
    by_op: dict[str, float] = collections.Counter()
    by_group_op: dict[tuple[str, str], float] = collections.Counter()
    calls: dict[str, int] = collections.Counter()
    for event in prof.events():
        if event.name.startswith(_GROUP):
            continue
        parent, group = event.cpu_parent, "(top level)"
        while parent is not None:
            if parent.name.startswith(_GROUP):
                group = parent.name[len(_GROUP):]
                break
            parent = parent.cpu_parent
        self_us = event.self_cpu_time_total
        by_group[group] += self_us
        by_op[event.name] += self_us
        by_group_op[(group, event.name)] += self_us
        calls[event.name] += 1
    total = sum(by_group.values()) or 1.0
    lines = ["| module group | self s | share | top ops |", "|---|---:|---:|---|"]
    for group, us in sorted(by_group.items(), key=lambda kv: -kv[1])[:top]:
        ops = sorted(((o, t) for (g, o), t in by_group_op.items() if g == group), key=lambda kv: -kv[1])[:3]
        shown = ", ".join(f"`{o}` {t / 1e6:.2f}" for o, t in ops)
        lines.append(f"| {group} | {us / 1e6:.2f} | {100 * us / total:.1f}% | {shown} |")
    lines += ["", "| operator | calls | self s | share |", "|---|---:|---:|---:|"]
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| `{op}` | {calls[op]} | {us / 1e6:.2f} | {100 * us / total:.1f}% |")
    return "\n".join(lines)


def profile_model(stage_name: str, top: int) -> str:
    from bench_jobs import counting_flops, make_stage
    from bench_models import IMAGES, Kit, default_cache

    from recognize.images import load_image

    kit = Kit(quick=False, cache=default_cache())
    stage = make_stage(kit, stage_name)
    stage.ensure_loaded()
    model = stage.model
    pixels = stage.pixels([load_image(IMAGES[0])])
    with torch.inference_mode():
        stage.logits(model, pixels)  # warm-up of the timed path (keeps the reused results, unless --plain)
        with counting_flops() as counter:  # the FLOPs this path executes
            stage.logits(model, pixels)
        flops = counter.get_total_flops()
        handles = _hooks(model)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            cpu, wall = time.process_time(), time.perf_counter()
            stage.logits(model, pixels)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        for h in handles:
            h.remove()
        cpu0 = time.process_time()
        stage.logits(model, pixels)
        cpu_plain = time.process_time() - cpu0
    threads = torch.get_num_threads()
    rate = flops / 1e9 / (cpu_plain / threads)
    head = (f"### {stage_name}: {flops / 1e9:.1f} GFLOP; profiled forward {wall:.2f} s wall / {cpu:.2f} s CPU; "
            f"unprofiled forward {cpu_plain:.2f} s CPU = {rate:.0f} GFLOP/s per {threads} threads")
    stage.unload()
    return head + "\n\n" + _tables(prof, top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="ram,ram_plus,tag2text")
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--plain", action="store_true", help="the path before the lean one (timm's blocks, ...)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from recognize import heap

    heap.keep_freed_memory()  # as `recognize run` and the stage benchmark do (recognize/heap.py)
    from bench_jobs import _matmul_rate, onednn_rate

    from recognize.taggers import lean_swin, precomputed, recognition_decoder

    # --plain: timm's blocks, the decoder's unfused adds and SDPA, no reuse of image-independent results
    lean_swin.LEAN = recognition_decoder.FUSED = precomputed.PRECOMPUTE = not args.plain
    mkl = _matmul_rate(2048, torch.float32, 2.0)["typical"]
    onednn = (onednn_rate(2048, 2.0) or {}).get("typical", float("nan"))
    print(machine_line())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; a @ b {mkl:.0f} GFLOP/s, "
          f"oneDNN {onednn:.0f} GFLOP/s (wall); lean path {'off' if args.plain else 'on'}\n", flush=True)
    for name in args.models.split(","):
        print(profile_model(name, args.top) + "\n", flush=True)


if __name__ == "__main__":
    main()
