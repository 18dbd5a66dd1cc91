"""Where the time goes inside SAM vit_h's image encoder and Grounding DINO (torch.profiler).

One forward at the official size with random weights (compute does not depend on weight values),
no warm-up: the first call is what a one-photo run pays. Prints the top operators by self CPU
time per model, as Markdown (the input of the profile table in benchmarks/README.md).

    python benchmarks/profile_stages.py --models sam,grounding_dino --top 12
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _table(prof, title: str, seconds: float, top: int) -> str:
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    lines = [f"#### {title}: {seconds:.1f} s wall", "", "| op | calls | self CPU s | share |", "|---|---:|---:|---:|"]
    for e in events[:top]:
        lines.append(f"| `{e.key}` | {e.count} | {e.self_cpu_time_total / 1e6:.2f} | "
                     f"{100 * e.self_cpu_time_total / total:.1f}% |")
    return "\n".join(lines)


def profile(fn, title: str, top: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch.inference_mode(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return _table(prof, title, seconds, top)


def sam_encoder(model: str = "vit_h"):
    from recognize_sam.model import build_sam

    sam = build_sam(model, seed=0)
    pixels = torch.randn(1, 3, 1024, 1024)
    return lambda: sam.image_encoder(pixels)


def grounding_dino(tags: int = 20):
    from bench_models import Kit, default_cache
    from recognize_grounding_dino.model import build_config, build_model, load_tokenizer

    kit = Kit(quick=False, cache=default_cache())
    tokenizer = load_tokenizer(kit.vocab())
    model = build_model(build_config("swint_ogc"), init_weights=True).eval()
    caption = ", ".join(f"thing{i}" for i in range(tags)) + "."
    tokens = tokenizer(caption, return_tensors="pt")
    pixels = torch.randn(1, 3, 800, 1200)
    return lambda: model(pixel_values=pixels, **tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="sam,grounding_dino")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in args.models.split(","):
        fn = {"sam": sam_encoder, "sam_vit_b": lambda: sam_encoder("vit_b"), "grounding_dino": grounding_dino}[name]()
        print(profile(fn, name, args.top), flush=True)


if __name__ == "__main__":
    main()
