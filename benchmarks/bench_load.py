"""Tagger cold load, side by side: the old way (build with random init, then copy the checkpoint
in) against the current one (parameters on the meta device, memory-mapped checkpoint tensors
assigned). Each measurement runs in a fresh process (`multiprocessing` spawn), the two ways
interleaved, so a busy machine slows both alike; reports load seconds, load + first forward
seconds, and peak RSS (VmHWM).

    python benchmarks/bench_load.py --stage ram_plus --repeats 2

Uses the benchmark's random released-size checkpoint (`bench_models.Kit`, written once).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _measure(way: str, stage: str, checkpoint: str, queue) -> None:
    import torch

    from recognize.taggers.checkpoint import load_official, parameters_on_meta
    from recognize.taggers.ram import RamConfig, build_model

    torch.set_num_threads(torch.get_num_threads())
    start = time.perf_counter()
    config = RamConfig.released(stage, 384)
    if way == "meta":
        with parameters_on_meta():
            model = build_model(config)
    else:
        model = build_model(config)
    load_official(model, checkpoint, model.key_spec())
    model.eval().requires_grad_(False)
    loaded = time.perf_counter() - start
    with torch.inference_mode():
        model(torch.zeros(1, 3, 384, 384))
    queue.put({"way": way, "load_s": loaded, "load_and_first_forward_s": time.perf_counter() - start,
               "peak_rss_mib": _peak_rss_mib()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stage", default="ram_plus", choices=["ram", "ram_plus"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args()
    from bench_models import Kit, default_cache

    kit = Kit(quick=False, cache=args.cache or default_cache())
    checkpoint = kit.tagger_params(args.stage)["checkpoint"]
    ctx = mp.get_context("spawn")
    results: dict[str, list[dict]] = {"eager": [], "meta": []}
    for _ in range(args.repeats):
        for way in ("eager", "meta"):
            queue = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(way, args.stage, checkpoint, queue))
            proc.start()
            results[way].append(queue.get())
            proc.join()
    summary = {way: {key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "way"}
               for way, runs in results.items()}
    ratios = {key: summary["eager"][key] / summary["meta"][key] for key in summary["meta"]}
    print(json.dumps({"stage": args.stage, "median": summary, "eager_over_meta": ratios, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
