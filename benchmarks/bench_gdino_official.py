"""Our Grounding DINO against the official implementation, forward by forward, on the same input.

Both sides load the same file: the benchmark's seeded random swint_ogc checkpoint written by the
official code in the official layout (every tensor non-zero). The official model runs in its own
venv and process (`official_env.py`, `official_gdino_worker.py bench`), loaded once; our
`GroundingDinoForObjectDetection` runs here. Each job is one photo resized the official way
(800 px short side, 1333 cap: the same tensor goes to both sides) and one 20-tag caption
(`", "`-joined, as the demo builds it); the two sides alternate which goes first, and only the
model forward is timed (text encoder included: our caption cache is cleared before each call, so
both sides do the same work). The machine is shared and noisy, hence the interleaving and medians.

    python benchmarks/bench_gdino_official.py --images 3 --repeats 2            # timing
    python benchmarks/bench_gdino_official.py --images 1 --repeats 1 --profile  # + where the time goes

FLOPs are counted as `run.py` counts them (torch.utils.flop_counter on our forward: matmuls,
convolutions, attention; grid_sample and element-wise ops not counted) and set against this
machine's fp32 matmul rate (`bench_jobs.matmul`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_machine import machine, machine_line
from bench_models import TAGS, Kit, default_cache, image_paths, official_worker_env
from gdino_timing import PARTS, op_table, part_times

#: 20 tags spelled with words the benchmark vocab holds whole (a real BERT vocab holds most tags
#: whole too), so the caption's token count is a realistic ~60.
CAPTION_TAGS = [*TAGS, "window", "clock", "cover", "album", "airplane", "alarm", "airport alley",
                "alpaca actor", "album window", "clock cover", "actor window", "alley clock"]


class Official:
    """The official model in its own process, loaded once; one job per call."""

    def __init__(self, spec_path: Path, threads: int) -> None:
        from official_env import official_python

        spec = {**json.loads(spec_path.read_text()), "threads": threads}
        self.folder = Path(tempfile.mkdtemp(prefix="gdino-official-"))
        (self.folder / "spec.json").write_text(json.dumps(spec))
        worker = Path(__file__).resolve().parent / "official_gdino_worker.py"
        self.process = subprocess.Popen([str(official_python()), str(worker), "bench", str(self.folder / "spec.json")],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=official_worker_env())
        self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the official worker stopped (see its stderr above)")
        return json.loads(line)

    def __call__(self, pixels: torch.Tensor, caption: str, **flags) -> dict:
        path = self.folder / "pixels.npy"
        np.save(path, pixels.numpy())
        self.process.stdin.write(json.dumps({"pixels": str(path), "caption": caption, **flags}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def ours_forward(detector, pixels: torch.Tensor, caption: str):
    tokens = detector.tokenizer(caption, return_tensors="pt")
    ids = tokens["input_ids"].expand(pixels.shape[0], -1)
    text = detector.model.model.text_backbone

    def forward():
        text.__dict__.get("_encodings", {}).clear()  # the official code re-encodes every caption
        with torch.inference_mode():
            return detector.model(pixel_values=pixels, input_ids=ids, attention_mask=torch.ones_like(ids),
                                  token_type_ids=torch.zeros_like(ids))

    return forward


def plain_detector(detector):
    """Our detector's weights in transformers' own classes, without `lean_layers`: ours before issue 11."""
    from recognize_grounding_dino.model import Detector
    from transformers import GroundingDinoForObjectDetection

    plain = GroundingDinoForObjectDetection(detector.model.config).eval()
    plain.load_state_dict(detector.model.state_dict())
    return Detector(plain, detector.tokenizer)


def grid_sample_detector(detector):
    """Our detector's weights with the lean layers but grid_sample deformable sampling (ours before
    `GatherSampling`), to time the two sampling paths side by side."""
    from recognize_grounding_dino.lean_layers import lean
    from recognize_grounding_dino.model import Detector, build_model

    model = lean(build_model(detector.model.config, init_weights=False), sampling="grid_sample")
    model.load_state_dict(detector.model.state_dict())
    return Detector(model, detector.tokenizer)


def flops_of(forward) -> int:
    """FLOPs of `forward()` on the plain torch path (`bench_jobs.counting_flops`: the counter has no formula
    for oneDNN's linear)."""
    from bench_jobs import counting_flops

    with counting_flops() as counter:
        forward()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also one profiled forward per side (parts + ops)")
    parser.add_argument("--quick", action="store_true", help="tiny model, small photos (checks the script runs)")
    parser.add_argument("--plain", action="store_true",
                        help="also time transformers' own classes without lean_layers (ours before issue 11)")
    parser.add_argument("--grid-sample", action="store_true",
                        help="also time our lean model with grid_sample deformable sampling (before the gather)")
    parser.add_argument("--no-official", action="store_true",
                        help="skip the official side (e.g. to compare our variants quickly)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards per side first (default 1)")
    parser.add_argument("--cache", type=Path, default=default_cache())
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    args = parser.parse_args(argv)
    from recognize import heap

    heap.keep_freed_memory()  # as `recognize run` does when it runs stages (recognize/heap.py)

    from bench_jobs import matmul
    from recognize_grounding_dino.model import Detector
    from recognize_grounding_dino.transforms import preprocess

    from recognize.frame import Frame

    kit = Kit(quick=args.quick, cache=args.cache)
    spec_path = kit.official_gdino_spec()
    spec = json.loads(spec_path.read_text())
    short, long = kit.gd_size
    caption = ", ".join(CAPTION_TAGS) + "."
    report: dict = {"machine": machine(), "size": [short, long], "caption": caption, "images": []}
    print(json.dumps(report["machine"]), flush=True)
    report["matmul"] = matmul(args.quick)
    detector = Detector.load("swint_ogc", spec["checkpoint"], spec["vocab"], config=spec.get("config"))
    official = None if args.no_official else Official(spec_path, torch.get_num_threads())
    try:
        report["tokens"] = len(detector.tokenizer(caption)["input_ids"])
        inputs = [preprocess(Frame(source=str(p)).image, short, long)[None] for p in image_paths(args.images)]
        sides = {"ours": detector}
        if args.plain:
            sides["plain"] = plain_detector(detector)
        if args.grid_sample:
            sides["grid_sample"] = grid_sample_detector(detector)
        first = ours_forward(detector, inputs[0], caption)
        report["flops"] = flops_of(first)  # also our first forward
        for _ in range(args.warmup):
            for name, model in sides.items():
                ours_forward(model, inputs[0], caption)()
            if official:
                official(inputs[0], caption)
        times: dict[str, list[float]] = {name: [] for name in [*sides, *(["official"] if official else [])]}
        parts: dict[str, list[dict]] = {name: [] for name in times}
        for repeat in range(args.repeats):
            for i, pixels in enumerate(inputs):
                order = list(times)
                if (repeat + i) % 2:
                    order.reverse()
                row = {"shape": list(pixels.shape)}
                for name in order:
                    if name == "official":
                        reply = official(pixels, caption, parts=True)
                        row[name], part = reply["forward_s"], reply["parts"]
                    else:
                        model = sides[name]
                        part = part_times(model.model, ours_forward(model, pixels, caption))
                        row[name] = part["total"]
                    times[name].append(row[name])
                    parts[name].append(part)
                report["images"].append(row)
                print(f"image {i} {tuple(pixels.shape[2:])}: " + ", ".join(f"{n} {row[n]:.2f} s" for n in times), flush=True)
        report["parts"] = {name: {key: statistics.median(p.get(key, 0.0) for p in runs) for key in runs[0]}
                           for name, runs in parts.items()}
        if args.profile:
            report["profile"] = {name: {"ops": op_table(ours_forward(model, inputs[0], caption))}
                                 for name, model in sides.items()}
            if official:
                report["profile"]["official"] = official(inputs[0], caption, profile=True)
    finally:
        if official:
            official.close()
    gflops = report["matmul"]["gflops"]
    onednn = report["matmul"].get("gflops_onednn")
    report["summary"] = {"gflop": report["flops"] / 1e9, "load_average_end": list(os.getloadavg()), "sides": {
        name: {"s": statistics.median(values), "pct_matmul": 100 * report["flops"] / statistics.median(values) / 1e9 / gflops,
               "pct_onednn": (100 * report["flops"] / statistics.median(values) / 1e9 / onednn) if onednn else None,
               "official_over_this": (statistics.median(times["official"]) / statistics.median(values)
                                      if "official" in times else None)}
        for name, values in times.items()}}
    print(render(report))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return report


def render(report: dict) -> str:
    s, m = report["summary"], report["matmul"]
    lines = [(f"{machine_line(report['machine'])}; "
              f"fp32 matmul {m['gflops']:.0f} GFLOP/s (`a @ b`), oneDNN {m.get('gflops_onednn') or 0:.0f}; load average {report['machine']['load_average'][0]:.1f} -> "
              f"{s['load_average_end'][0]:.1f}"),
             f"input {report['images'][0]['shape']}, caption {report['tokens']} tokens, {s['gflop']:.1f} GFLOP/forward",
             "", "| | s/forward (median) | % of fp32 `a @ b` rate | % of oneDNN rate | official s / this s |",
             "|---|---:|---:|---:|---:|"]
    for name, side in s["sides"].items():
        ratio = "-" if side["official_over_this"] is None else f"{side['official_over_this']:.2f}x"
        onednn = "-" if side.get("pct_onednn") is None else f"{side['pct_onednn']:.0f}%"
        lines.append(f"| {name} | {side['s']:.2f} | {side['pct_matmul']:.0f}% | {onednn} | {ratio} |")
    names = list(report["parts"])
    lines += ["", "| part (inclusive s, median) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for part in [*PARTS, "total"]:
        lines.append(f"| {part} | " + " | ".join(f"{report['parts'][n].get(part, 0):.2f}" for n in names) + " |")
    if "profile" in report:
        for side, data in report["profile"].items():
            lines += ["", f"{side}: | op | calls | self s | share |", "|---|---:|---:|---:|"]
            lines += [f"| `{o['op']}` | {o['calls']} | {o['self_s']:.2f} | {100 * o['share']:.1f}% |" for o in data["ops"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
