"""Where the SAM stage's time goes, part by part, and its share of oneDNN's fp32 GEMM rate; two ways interleaved.

    python benchmarks/bench_sam_stage.py --repeats 2        # vit_h (the benchmark's random checkpoint), 13.8 MP photo, 8 boxes
    python benchmarks/bench_sam_stage.py --quick            # the tests' tiny SAM, 2 boxes: checks it runs

What the `sam` stage does per image (`recognize_sam.predict.BoxSegmenter`), timed part by part:
resize (longest side to 1024) and normalise, the image encoder (patch embedding, windowed blocks,
global blocks, neck: forward hooks), the decoder (prompt encoder + mask decoder) and the postprocessing
(upsampling each kept low-res mask to the photo's size, thresholding, into the bool array).
Two ways take turns on the same model, so a machine that gets busier slows both alike:
- `before`: the decoder as it was before issue 11's third step: one box per decoder call, its
  linears plain `nn.Linear` (MKL);
- `after`: today's default (8 boxes per decoder call, oneDNN linears).
The encoder is the same code in both (`LeanBlock`).

The machine is shared, so every time is reported twice: wall seconds and **process CPU seconds /
threads** ("cpu/thr": what the part would take on idle cores, if the threads were busy all along;
OpenMP threads spinning while they wait count too, so it is an upper bound). The oneDNN rate is
probed the same two ways (a 2048^3 product through `torch.ops.mkldnn._linear_pointwise`) between the
passes, and each share is FLOPs / time / rate with the same kind of time on both sides. FLOPs are
counted on the plain torch path of the same model (`bench_jobs.counting_flops`: segment-anything's
encoder, padding included, and the decoder per box), as `benchmarks/run.py` counts them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_machine import machine

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "reference" / "data" / "images" / "1641173_2291260800.jpg"
CHECKPOINT = Path.home() / ".cache" / "recognize" / "benchmarks" / "full" / "sam_random.pth"
QUICK_CONFIG = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1]}


class Clock:
    """Wall and process-CPU seconds per named part, summed over a pass."""

    def __init__(self) -> None:
        self.parts: dict[str, list[float]] = {}

    def add(self, name: str, wall: float, cpu: float) -> None:
        total = self.parts.setdefault(name, [0.0, 0.0])
        total[0] += wall
        total[1] += cpu

    def time(self, name: str, run):
        wall, cpu = time.perf_counter(), time.process_time()
        out = run()
        self.add(name, time.perf_counter() - wall, time.process_time() - cpu)
        return out


def _hook_encoder(encoder: torch.nn.Module, clock: list[Clock]) -> None:
    """Forward hooks timing the patch embedding, each block (windowed / global) and the neck into clock[0]."""
    parts = [("patch embedding", encoder.patch_embed), ("neck", encoder.neck)]
    parts += [("windowed blocks" if block.window_size > 0 else "global blocks", block) for block in encoder.blocks]
    for name, module in parts:
        def pre(module, args, name=name):
            module._started = (time.perf_counter(), time.process_time())

        def post(module, args, output, name=name):
            wall, cpu = module._started
            clock[0].add(name, time.perf_counter() - wall, time.process_time() - cpu)

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def _set_way(sam, way: str) -> None:
    from recognize.onednn_linear import OneDNNLinear
    from recognize_sam.predict import BoxSegmenter

    BoxSegmenter.boxes_per_call = 1 if way == "before" else 8
    for module in sam.mask_decoder.modules():
        if isinstance(module, torch.nn.Linear):
            module.__class__ = torch.nn.Linear if way == "before" else OneDNNLinear


def _onednn_probe(n: int, seconds: float) -> tuple[float, float]:
    """(GFLOP/s by wall time, GFLOP/s by CPU time / threads) of an n^3 product through oneDNN."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    run = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")  # noqa: E731
    run()
    walls, cpus = [], []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(walls) < 3:
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append((time.process_time() - cpu) / torch.get_num_threads())
    flop = 2 * n**3 / 1e9
    return flop / statistics.median(walls), flop / statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="passes per way (alternating order)")
    parser.add_argument("--boxes", type=int, default=8)
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--photo", type=Path, default=PHOTO)
    parser.add_argument("--quick", action="store_true", help="the tests' tiny SAM, 2 boxes, short probes")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    from recognize import heap

    heap.keep_freed_memory()  # as `recognize run` does when it runs stages (recognize/heap.py)

    from bench_jobs import counting_flops
    from recognize.images import load_image
    from recognize_sam.model import SamConfig, build_sam, load_checkpoint
    from recognize_sam.predict import BoxSegmenter, ImageEmbedding

    if args.quick:
        sam = build_sam(config=SamConfig(**QUICK_CONFIG), seed=0)
        args.boxes = 2
    else:
        sam = load_checkpoint(build_sam("vit_h", on_meta=True), args.checkpoint, expected="vit_h")
    sam.eval()
    image = load_image(args.photo)
    height, width = image.shape[:2]
    rng = np.random.default_rng(0)
    x0, y0 = rng.uniform(0, width * 0.7, args.boxes), rng.uniform(0, height * 0.7, args.boxes)
    boxes = np.stack([x0, y0, np.minimum(x0 + rng.uniform(64, width * 0.5, args.boxes), width - 1),
                      np.minimum(y0 + rng.uniform(64, height * 0.5, args.boxes), height - 1)], axis=1)
    segmenter = BoxSegmenter(sam)
    clock = [Clock()]
    _hook_encoder(sam.image_encoder, clock)
    postprocess = sam.postprocess_masks
    sam.postprocess_masks = lambda *a, **k: clock[0].time("postprocess (upsample)", lambda: postprocess(*a, **k))

    def one_pass() -> tuple[Clock, np.ndarray]:
        clock[0] = Clock()
        with torch.inference_mode():
            resized = clock[0].time("resize", lambda: segmenter.transform.apply_image(image))
            pixels = clock[0].time("normalise + pad", lambda: sam.preprocess(
                torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]))
            features = clock[0].time("encoder", lambda: sam.image_encoder(pixels))
        embedding = ImageEmbedding(features, tuple(resized.shape[:2]), (height, width))
        result = clock[0].time("decode + postprocess", lambda: segmenter.segment(embedding, boxes))
        return clock[0], result.masks

    # FLOPs on the plain torch path (also the warm-up)
    with counting_flops() as counter, torch.inference_mode():
        features = sam.image_encoder(sam.preprocess(torch.as_tensor(segmenter.transform.apply_image(image))
                                                    .permute(2, 0, 1).contiguous()[None]))
    encoder_gflop = counter.get_total_flops() / 1e9
    _set_way(sam, "before")
    input_size = segmenter.transform.get_preprocess_shape(height, width, sam.image_encoder.img_size)
    with counting_flops() as counter:
        segmenter.segment(ImageEmbedding(features, tuple(input_size), (height, width)), boxes)
    decoder_gflop = counter.get_total_flops() / 1e9

    ways = ("before", "after")
    passes: dict[str, list[dict[str, list[float]]]] = {way: [] for way in ways}
    probes: list[tuple[float, float]] = []
    masks: dict[str, np.ndarray] = {}
    probe_n, probe_s = (1024, 0.5) if args.quick else (2048, 3.0)
    for repeat in range(args.repeats):
        for way in (ways if repeat % 2 == 0 else ways[::-1]):
            probes.append(_onednn_probe(probe_n, probe_s))
            _set_way(sam, way)
            timed, masks[way] = one_pass()
            passes[way].append(timed.parts)
    probes.append(_onednn_probe(probe_n, probe_s))
    _set_way(sam, "after")

    threads = torch.get_num_threads()
    rate_wall = statistics.median(p[0] for p in probes)
    rate_cpu = statistics.median(p[1] for p in probes)
    result = {"machine": machine(), "model": "tiny" if args.quick else "vit_h", "photo": f"{args.photo.name} {width}x{height}",
              "boxes": args.boxes, "threads": threads, "gflop_encoder": encoder_gflop, "gflop_decoder": decoder_gflop,
              "gflop_stage": encoder_gflop + decoder_gflop,
              "onednn_gflops_wall": rate_wall, "onednn_gflops_cpu_per_thread": rate_cpu,
              "onednn_probes": probes, "load_average": Path("/proc/loadavg").read_text().split()[:3],
              "masks_differing_pixels": int((masks["before"] != masks["after"]).sum()), "ways": {}}
    for way in ways:
        names = list(passes[way][0])
        parts = {name: {"wall_s": statistics.median(p[name][0] for p in passes[way]),
                        "cpu_per_thread_s": statistics.median(p[name][1] / threads for p in passes[way])}
                 for name in names}
        stage = {kind: sum(parts[n][kind] for n in ("resize", "normalise + pad", "encoder", "decode + postprocess"))
                 for kind in ("wall_s", "cpu_per_thread_s")}
        parts["stage"] = stage
        result["ways"][way] = {
            "parts": parts,
            "encoder_share_of_onednn": {"wall": encoder_gflop / parts["encoder"]["wall_s"] / rate_wall,
                                        "cpu": encoder_gflop / parts["encoder"]["cpu_per_thread_s"] / rate_cpu},
            "stage_share_of_onednn": {"wall": result["gflop_stage"] / stage["wall_s"] / rate_wall,
                                      "cpu": result["gflop_stage"] / stage["cpu_per_thread_s"] / rate_cpu}}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
