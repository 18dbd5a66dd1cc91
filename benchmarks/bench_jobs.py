"""One measurement each: a job runs in its own process and returns a dict of numbers.

Kinds: `matmul` (the machine's fp32 matmul GFLOP/s), `stage` (one stage, ours or the baseline),
`recipe` (tag -> ground -> segment over a folder, ours or the baseline) and `engine` (a tagging
recipe on the local engine or on Ray with 1 and 2 workers). Peak memory is the process's own
high-water mark (`VmHWM`), so numbers of different jobs never mix.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from bench_models import BOXES, TAGS, Kit, boxes_for
from recognize.frame import Frame, Region, Tag
from recognize.stage import Stage, StageParams

#: Recipe thresholds: random weights give meaningless scores, so everything passes and the cap of
#: `Kit.boxes` regions per image gives our pipeline and the baseline the same amount of SAM work.
RECIPE_BOX_THRESHOLD = 0.0
RECIPE_TEXT_THRESHOLD = 0.0


def memory_mb() -> dict[str, float]:
    """Current and peak resident memory of this process, in MiB."""
    found: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
    except OSError:  # not Linux: getrusage's peak (KiB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        found = {"VmRSS": float("nan"), "VmHWM": peak / (1024 * 1024 if os.uname().sysname == "Darwin" else 1024)}
    return {"rss_mb": found.get("VmRSS", float("nan")), "peak_rss_mb": found.get("VmHWM", float("nan"))}


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


class TopRegions(Stage):
    """Keeps each frame's `k` best-scoring regions (the benchmark's cap on SAM's work)."""

    name: ClassVar[str] = "bench_top_regions"
    kind: ClassVar = "filter"

    class Params(StageParams):
        k: int = Field(BOXES, ge=0)

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            frame.regions = sorted(frame.regions, key=lambda r: -(r.score or 0.0))[: self.params.k]
        return frames


def make_stage(kit: Kit, stage: str, **params: Any) -> Stage:
    from recognize import plugins

    return plugins.get_stage(stage)({**kit.stage_params(stage), "device": "cpu", **params})


def load_images(paths: list[Path]) -> list[np.ndarray]:
    from recognize.images import load_image

    return [load_image(p) for p in paths]


def stage_frames(stage: str, images: list[np.ndarray], boxes: int) -> list[Frame]:
    """Fresh frames for `stage`: Grounding DINO gets the fixed tags, SAM the fixed boxes."""
    frames = []
    for i, image in enumerate(images):
        frame = Frame.from_array(image, source=f"image{i}")
        if stage in ("grounding_dino", "sam"):
            frame.tags = [Tag(name=t) for t in TAGS]
        if stage == "sam":
            found = boxes_for(*image.shape[:2], boxes)
            frame.regions = [Region(box=tuple(map(float, b)), tag=TAGS[j % len(TAGS)]) for j, b in enumerate(found)]
        frames.append(frame)
    return frames


# -- jobs -------------------------------------------------------------------------------------------
def matmul(quick: bool) -> dict[str, Any]:
    """fp32 GFLOP/s of a square matmul with every torch thread: this machine's practical limit."""
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    runs, start = 0, time.perf_counter()
    budget = 0.5 if quick else 3.0
    times = []
    while time.perf_counter() - start < budget or runs < 3:
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
        runs += 1
    best = 2 * n**3 / min(times) / 1e9
    typical = 2 * n**3 / _median(times) / 1e9
    return {"n": n, "runs": runs, "threads": torch.get_num_threads(), "gflops": typical, "gflops_best": best}


def stage_ours(kit: Kit, stage: str, paths: list[Path], repeats: int) -> dict[str, Any]:
    """Load once, warm up (counting FLOPs), then seconds per image at batch 1 and batch 4."""
    from torch.utils.flop_counter import FlopCounterMode

    images = load_images(paths)
    before = memory_mb()["rss_mb"]
    model = make_stage(kit, stage)
    start = time.perf_counter()
    model.ensure_loaded()
    load_s = time.perf_counter() - start

    counter = FlopCounterMode(display=False)
    with counter:
        model(stage_frames(stage, images[:1], kit.boxes))
    flops = counter.get_total_flops()

    batch1: list[float] = []
    for _ in range(repeats):
        for frame in stage_frames(stage, images, kit.boxes):
            start = time.perf_counter()
            model([frame])
            batch1.append(time.perf_counter() - start)
    model.params.batch_size = 4
    batch4: list[float] = []
    four = [images[i % len(images)] for i in range(4)]
    for _ in range(repeats):
        frames = stage_frames(stage, four, kit.boxes)
        start = time.perf_counter()
        model(frames)
        batch4.append((time.perf_counter() - start) / 4)
    return {"load_s": load_s, "flops": flops, "s_per_img_b1": _median(batch1), "s_per_img_b4": _median(batch4),
            "b1_runs": batch1, "b4_runs": batch4, "rss_before_mb": before, **memory_mb()}


def stage_baseline(kit: Kit, stage: str, paths: list[Path], repeats: int) -> dict[str, Any]:
    """Per image: build + load the model, run it on that image alone, drop it (the demo's way)."""
    import bench_baseline

    images = load_images(paths)
    before = memory_mb()["rss_mb"]
    if stage == "grounding_dino":
        load, run = bench_baseline.grounding_dino(kit)
        infer = lambda m, img: run(m, img, list(TAGS))  # noqa: E731
    elif stage == "sam":
        load, run = bench_baseline.sam(kit)
        infer = lambda m, img: run(m, img, boxes_for(*img.shape[:2], kit.boxes))  # noqa: E731
    else:
        load, infer = bench_baseline.tagger(kit, stage)
    loads: list[float] = []
    infers: list[float] = []
    for _ in range(repeats):
        for image in images:
            start = time.perf_counter()
            model = load()
            loaded = time.perf_counter()
            infer(model, image)
            infers.append(time.perf_counter() - loaded)
            loads.append(loaded - start)
            del model
            gc.collect()
    total = [a + b for a, b in zip(loads, infers)]
    return {"load_s": _median(loads), "infer_s_per_img": _median(infers), "s_per_img": _median(total),
            "load_runs": loads, "infer_runs": infers, "rss_before_mb": before, **memory_mb()}


def recipe_ours(kit: Kit, folder: Path) -> dict[str, Any]:
    """ram_plus -> grounding_dino -> (top regions) -> sam as one Pipeline over the folder, batch 4."""
    from recognize.pipeline import Pipeline

    before = memory_mb()["rss_mb"]
    pipeline = Pipeline(
        [make_stage(kit, "ram_plus", include=list(TAGS), threshold=0.0),
         make_stage(kit, "grounding_dino", box_threshold=RECIPE_BOX_THRESHOLD, text_threshold=RECIPE_TEXT_THRESHOLD),
         TopRegions(k=kit.boxes), make_stage(kit, "sam")],
        batch_size=4, device="cpu", name="tag_ground_segment")
    start = time.perf_counter()
    pipeline.load()
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    frames = list(pipeline.run([folder]))
    seconds = time.perf_counter() - start
    return {"images": len(frames), "load_s": load_s, "seconds": seconds, "s_per_img": seconds / len(frames),
            "tags_per_img": _mean(len(f.tags) for f in frames), "regions_per_img": _mean(len(f.regions) for f in frames),
            "masks_per_img": _mean(sum(r.mask is not None for r in f.regions) for f in frames),
            "stage_seconds": dict(pipeline.timings), "rss_before_mb": before, **memory_mb()}


def recipe_baseline(kit: Kit, folder: Path) -> dict[str, Any]:
    """The demo script once per image: every model built and loaded for each image."""
    import bench_baseline
    from recognize.images import expand_inputs, load_image

    before = memory_mb()["rss_mb"]
    tag_load, tag_infer = bench_baseline.tagger(kit, "ram_plus", include=TAGS, threshold=0.0)
    gd_load, gd_infer = bench_baseline.grounding_dino(kit, RECIPE_BOX_THRESHOLD, RECIPE_TEXT_THRESHOLD)
    sam_load, sam_infer = bench_baseline.sam(kit)
    paths = [p for p, _ in expand_inputs([folder])]
    load_s = infer_s = 0.0
    tags, regions, masks = [], [], []
    start = time.perf_counter()
    for path in paths:
        image = load_image(path)
        found_tags = _timed_step(tag_load, lambda m: tag_infer(m, image))
        detected = _timed_step(gd_load, lambda m: gd_infer(m, image, found_tags.value))
        boxes = detected.value[0][: kit.boxes]  # torchvision NMS returns boxes by decreasing score
        found_masks = _timed_step(sam_load, lambda m: sam_infer(m, image, boxes))
        for step in (found_tags, detected, found_masks):
            load_s += step.load_s
            infer_s += step.infer_s
        tags.append(len(found_tags.value))
        regions.append(len(boxes))
        masks.append(len(found_masks.value))
    seconds = time.perf_counter() - start
    return {"images": len(paths), "load_s": load_s / len(paths), "infer_s_per_img": infer_s / len(paths),
            "seconds": seconds, "s_per_img": seconds / len(paths), "tags_per_img": _mean(tags),
            "regions_per_img": _mean(regions), "masks_per_img": _mean(masks), "rss_before_mb": before, **memory_mb()}


@dataclass
class _Step:
    value: Any
    load_s: float
    infer_s: float


def _timed_step(load, infer) -> _Step:
    start = time.perf_counter()
    model = load()
    loaded = time.perf_counter()
    value = infer(model)
    done = time.perf_counter()
    del model
    gc.collect()
    return _Step(value, loaded - start, done - loaded)


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def engines(kit: Kit, folder: Path, engine: str, workers: list[int]) -> dict[str, Any]:
    """A ram_plus tagging recipe through `run_to_folder` on one engine (Ray: each worker count)."""
    from recognize.pipeline import Pipeline
    from recognize.runner import run_to_folder

    def pipeline() -> Pipeline:
        return Pipeline([make_stage(kit, "ram_plus")], batch_size=4, device="cpu", name="tag")

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="recognize-bench-") as tmp:
        if engine == "local":
            start = time.perf_counter()
            summary = run_to_folder(pipeline(), [folder], Path(tmp) / "local", quiet=True, overwrite=True)
            results["local"] = _engine_result(summary, time.perf_counter() - start, 1)
        else:
            import ray

            from recognize.engines.ray_engine import RayEngine

            start = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            results["ray_init_s"] = time.perf_counter() - start
            try:
                for n in workers:
                    start = time.perf_counter()
                    summary = run_to_folder(pipeline(), [folder], Path(tmp) / f"ray{n}", quiet=True, overwrite=True,
                                            engine=RayEngine(num_workers=n))
                    results[f"ray_{n}"] = _engine_result(summary, time.perf_counter() - start, n)
            finally:
                ray.shutdown()
    results.update(memory_mb())
    return results


def _engine_result(summary: Any, seconds: float, workers: int) -> dict[str, Any]:
    if summary.failed:
        raise RuntimeError(f"{summary.failed} image(s) failed: {summary.failures[0]}")
    return {"workers": workers, "images": summary.processed, "seconds": seconds,
            "images_per_s": summary.processed / seconds}


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job description (see `run.py`) and return its numbers."""
    kit = Kit(quick=job["quick"], cache=Path(job["cache"]))
    kind = job["kind"]
    if kind == "prepare":
        kit.prepare(job["stages"])
        return {}
    if kind == "matmul":
        return matmul(job["quick"])
    if kind == "stage":
        paths = [Path(p) for p in job["paths"]]
        fn = stage_ours if job["side"] == "ours" else stage_baseline
        return fn(kit, job["stage"], paths, job["repeats"])
    if kind == "recipe":
        fn = recipe_ours if job["side"] == "ours" else recipe_baseline
        return fn(kit, Path(job["folder"]))
    if kind == "engine":
        return engines(kit, Path(job["folder"]), job["engine"], job.get("workers", [1, 2]))
    raise ValueError(f"unknown job kind {kind!r}")
