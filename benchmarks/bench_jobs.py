"""One measurement each: a job runs in its own process and returns a dict of numbers.

Kinds: `prepare` (write the random checkpoints), `matmul` (the machine's fp32 and bf16 matmul
GFLOP/s), `stage` (one stage and its baseline), `chain` (tag -> ground -> segment over a folder:
`recognize run` against the demo per photo, `bench_chain.py`), `chain_flops` (the chain's FLOPs per
photo, when the stage table lacks them). The engine benchmark runs in fresh interpreters instead
(`bench_engines.py`). In a stage job ours and the baseline share one process and run interleaved,
so a machine that slows down affects both; peak memory is the process's high-water mark (`VmHWM`),
reset between the two sides (Linux `clear_refs`), imports included.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_models import LOCALIZERS, SEGMENTERS, TAGS, Kit, boxes_for

from recognize import heap
from recognize.device_copies import is_cuda
from recognize.frame import Frame, Region, Tag
from recognize.stage import Stage


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


def make_stage(kit: Kit, stage: str, **params: Any) -> Stage:
    from recognize import plugins

    return plugins.get_stage(stage)({**kit.stage_params(stage), "device": kit.device, **params})


def synchronize(device: str) -> None:
    """Wait for the work queued on `device` (CUDA runs asynchronously: a timer must not stop early)."""
    if is_cuda(device):
        torch.cuda.synchronize()


def device_memory(device: str, reset: bool = False) -> dict[str, float]:
    """The GPU's peak allocated memory (MiB) since the last reset, where the run is on CUDA; {} elsewhere."""
    if not is_cuda(device):
        return {}
    peak = torch.cuda.max_memory_allocated() / 2**20
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return {"peak_device_mb": peak}


def load_images(paths: list[Path]) -> list[np.ndarray]:
    from recognize.images import load_image

    return [load_image(p) for p in paths]


def stage_frames(stage: str, images: list[np.ndarray], boxes: int) -> list[Frame]:
    """Fresh frames for `stage`: Grounding DINO gets the fixed tags, SAM the fixed boxes."""
    frames = []
    for i, image in enumerate(images):
        frame = Frame.from_array(image, source=f"image{i}")
        if stage in LOCALIZERS + SEGMENTERS:
            frame.tags = [Tag(name=t) for t in TAGS]
        if stage in SEGMENTERS:
            found = boxes_for(*image.shape[:2], boxes)
            frame.regions = [Region(box=tuple(map(float, b)), tag=TAGS[j % len(TAGS)]) for j, b in enumerate(found)]
        frames.append(frame)
    return frames


# -- jobs -------------------------------------------------------------------------------------------
def matmul(quick: bool, device: str = "cpu") -> dict[str, Any]:
    """fp32 and bf16 GFLOP/s of a square matmul with every torch thread: this machine's practical limits
    (bf16 runs ~3x fp32 on CPUs with AMX and slower than fp32 on CPUs without native bf16 GEMMs). On CUDA
    the fp32 product is full fp32 (no TF32: `torch.get_float32_matmul_precision()` stays "highest", as the
    exact paths run), at 8192^3 so the GPU is filled."""
    # quick (the tests' runs): 512^3, so the bf16 probe of a CPU without bf16 instructions (0.3 GFLOP/s)
    # takes ~1 s per product instead of ~7 s at 1024^3; the rates only fill the report's columns there
    cuda = is_cuda(device)
    n = 512 if quick else 8192 if cuda else 2048
    budget = 0.5 if quick else 3.0
    fp32 = _matmul_rate(n, torch.float32, budget, device)
    bf16 = _matmul_rate(n, torch.bfloat16, budget, device)
    result = {"n": n, "runs": fp32["runs"], "threads": torch.get_num_threads(), "gflops": fp32["typical"],
              "gflops_best": fp32["best"], "gflops_bf16": bf16["typical"], "gflops_bf16_best": bf16["best"],
              "device": device}
    if cuda:
        result.update(device_name=torch.cuda.get_device_name(),
                      float32_matmul_precision=torch.get_float32_matmul_precision())
        return result
    onednn = onednn_rate(n, budget)
    if onednn is not None:
        result.update(gflops_onednn=onednn["typical"], gflops_onednn_best=onednn["best"])
    return result


def _matmul_rate(n: int, dtype: torch.dtype, budget: float, device: str = "cpu") -> dict[str, float]:
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)

    def product() -> None:
        a @ b
        synchronize(device)

    return _rate(product, n, budget)


def onednn_rate(n: int, budget: float) -> dict[str, float] | None:
    """fp32 GFLOP/s of the same product through oneDNN's linear, the GEMM our exact CPU paths use
    (`recognize.onednn_linear`): where MKL's sgemm (`a @ b`) is slow (AMD), this is the truer limit."""
    from recognize.onednn_linear import available

    if not available():
        return None
    a, b = torch.randn(n, n), torch.randn(n, n)
    return _rate(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""), n, budget)


def _rate(run, n: int, budget: float) -> dict[str, float]:
    """GFLOP/s of `run` (an n^3 product): two warm-ups, then timed runs for `budget` seconds, 3 at least.
    A product whose second (warm) run took over a third of the budget is timed by that run alone (bf16
    on CPUs without bf16 instructions: 0.3 GFLOP/s, ~1 minute per 2048^3 product on an AVX2-only EPYC,
    where the usual five runs took ~5 minutes at a run's start and again at its end)."""
    run()
    start = time.perf_counter()
    run()
    if (elapsed := time.perf_counter() - start) > budget / 3:  # decided on a warm run, not the first
        return {"runs": 1, "best": 2 * n**3 / elapsed / 1e9, "typical": 2 * n**3 / elapsed / 1e9}
    runs, start = 0, time.perf_counter()
    times = []
    while time.perf_counter() - start < budget or runs < 3:
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
        runs += 1
    return {"runs": runs, "best": 2 * n**3 / min(times) / 1e9, "typical": 2 * n**3 / _median(times) / 1e9}


@contextlib.contextmanager
def counting_flops(reuse: bool = True) -> Iterator[Any]:
    """A `FlopCounterMode` over the plain torch path of the same models: the models' own FLOPs per image.

    Our exact CPU paths run oneDNN's linear (`recognize.onednn_linear`) and, in SAM's `LeanBlock` and the
    taggers' `LeanSwinBlock`, CPU flash attention (SAM: without the window padding's work):
    `FlopCounterMode` (torch 2.14) has no formula for either, so it would count them as zero. Inside this
    block all are switched off, so the count is the model's FLOPs as `nn.Linear`, segment-anything and
    timm compute them ("FLOPs counted as today"), including work the exact paths skip: SAM's window
    padding, and Grounding DINO's image-side fusion projections, which its fusion attention folds through
    the text side (`lean_layers.FOLD_FUSION`, switched off here too: 168 of 663 GFLOP at 800 x 1066 are not
    executed), so those stages' rates are rates of delivering the model's computation. The switches are
    process-wide: count while no other thread runs a model.

    The taggers' reuse of image-independent results (`recognize.taggers.precomputed`) stays as it is:
    on a warm model (count the *second* call) the work it skips (RAM ~9.0 GFLOP of 320, Tag2Text ~4.0 of
    176 per forward; RAM++ none: its queries depend on the image) is not counted, so a "% of matmul"
    rate is the rate of the work done. `reuse=False` recomputes them inside the block: the FLOPs of the
    official code, which recomputes them every call (the "before" side of `bench_taggers.py`).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from recognize import onednn_linear
    from recognize.taggers import lean_swin, precomputed

    # (module, switch, value while counting): the lean paths off, the plain torch path on
    switches = [(onednn_linear, "ONEDNN", False), (lean_swin, "LEAN", False)]
    if not reuse:
        switches.append((precomputed, "PRECOMPUTE", False))
    for plugin, switch in (("recognize_sam.lean_block", "LEAN"), ("recognize_grounding_dino.lean_layers", "FOLD_FUSION")):
        try:
            switches.append((importlib.import_module(plugin), switch, False))
        except ImportError:  # that plugin is not installed: nothing of it to count
            pass
    saved = [(module, switch, getattr(module, switch)) for module, switch, _ in switches]
    for module, switch, value in switches:
        setattr(module, switch, value)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            yield counter
    finally:
        for module, switch, value in saved:
            setattr(module, switch, value)


def _after_plain_path(warm_up) -> None:
    """Back to the state a run is in after the FLOP-counting call, which runs the plain path: that reads
    the plain weights back into RSS beside their prepacked copies (`recognize.onednn_linear`), which a
    run never does. The copies are dropped and made again by `warm_up` (which unmaps the plain weights'
    pages again), and the peak count restarts there: "peak RSS b4" is the warm-up and a batch of 4."""
    onednn = sys.modules.get("recognize.onednn_linear")
    if onednn is None or not onednn.drop_packed():
        return
    reset_peak()
    warm_up()


def reset_peak() -> bool:
    """Restart the process's peak-memory count (Linux `clear_refs`), so one process can measure two phases."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def baseline_for(kit: Kit, stage: str):
    """(load, infer(model, image)) of the baseline for one stage, with the stage benchmark's inputs."""
    import bench_baseline

    if stage == "grounding_dino":
        load, run = bench_baseline.grounding_dino(kit)
        return load, lambda m, img: run(m, img, list(TAGS))
    if stage == "sam":
        load, run = bench_baseline.sam(kit)
        return load, lambda m, img: run(m, img, boxes_for(*img.shape[:2], kit.boxes))
    if stage == "sam2":
        load, run = bench_baseline.sam2(kit)
        return load, lambda m, img: run(m, img, boxes_for(*img.shape[:2], kit.boxes))
    if stage in ("owlv2", "tiled"):  # tiled: its baseline is the whole-image pass alone (the cost of tiling)
        load, run = bench_baseline.owlv2(kit)
        return load, lambda m, img: run(m, img, list(TAGS))
    return bench_baseline.tagger(kit, stage)


def _timed(fn, *args, device: str = "cpu") -> float:
    start = time.perf_counter()
    fn(*args)
    synchronize(device)
    return time.perf_counter() - start


def stage_pair(kit: Kit, stage: str, paths: list[Path], repeats: int) -> dict[str, dict[str, Any]]:
    """Our stage and its baseline in one process, their timings interleaved image by image.

    1. baseline memory: one image the demo's way (build, load, infer, drop) with nothing else loaded;
    2. ours: load once, warm up on one image, count its FLOPs on a second call (warm: the work executed),
       one batch of 4: our memory;
    3. `repeats` passes over the images; for each image our stage at batch 1 and the baseline (load +
       infer), in alternating order, then one batch of 4 per further pass. A machine that slows
       down slows both sides alike, so their ratio holds.

    The fp32 GEMM rates are probed in this process right before step 3 and right after it
    (`matmul_probes`): the stage table's "% of matmul" columns divide by the higher of the two, so a
    machine that runs slower or faster during one stage than at the run's start does not move them.

    From step 2 on, freed memory is kept for reuse (`recognize.heap`), as `recognize run` and every
    engine do when they run stages. The setting is process-wide, so the baseline's timed calls that
    follow get it too (its memory in step 1 does not): that can only make the baseline faster.
    """
    images = load_images(paths)
    imports_mb = memory_mb()["rss_mb"]
    base_load, base_infer = baseline_for(kit, stage)
    device = kit.device
    if is_cuda(device):  # both sides in full float32, as our exact stage sets it when it loads (not torch's default)
        torch.backends.cudnn.allow_tf32 = False
    loads: list[float] = []
    infers: list[float] = []

    def baseline(image: np.ndarray) -> float | None:
        """One timed load + infer; the peak GPU MiB a baseline in a process of its own (the official Grounding
        DINO) reports for itself, else None."""
        start = time.perf_counter()
        model = base_load()
        synchronize(device)
        loaded = time.perf_counter()
        base_infer(model, image)
        synchronize(device)
        infers.append(time.perf_counter() - loaded)
        loads.append(loaded - start)
        own_peak = getattr(model, "peak_device_mb", None)
        del model  # a worker process exits here, outside the timers
        gc.collect()
        return own_peak

    resettable = reset_peak()
    device_memory(device, reset=True)
    own_peak = baseline(images[0])
    base_peak = memory_mb()["peak_rss_mb"]
    base_device = device_memory(device, reset=True)
    if own_peak is not None:  # the model was in the worker's process: its peak, not this process's ~0
        base_device = {"peak_device_mb": own_peak}
    loads.clear()
    infers.clear()

    reset_peak()
    heap.keep_freed_memory()
    ours = make_stage(kit, stage)
    load_s = _timed(ours.ensure_loaded, device=device)
    ours(stage_frames(stage, images[:1], kit.boxes))  # the warm-up of the path that is timed
    with counting_flops() as counter:  # warm: the models' own FLOPs per image (reused results not counted)
        ours(stage_frames(stage, images[:1], kit.boxes))
    _after_plain_path(lambda: ours(stage_frames(stage, images[:1], kit.boxes)))
    four = [images[i % len(images)] for i in range(4)]
    ours.params.batch_size = 4
    device_memory(device, reset=True)  # "peak GPU MiB b4": the batch of 4 (the weights are in it)
    batch4 = [_timed(ours, stage_frames(stage, four, kit.boxes), device=device) / 4]
    ours_peak = memory_mb()["peak_rss_mb"]
    ours_device = device_memory(device)
    probes = [matmul(kit.quick, device)]  # the machine's GEMM rates now, in this process (and again after)

    batch1: list[float] = []
    for r in range(repeats):
        for i, image in enumerate(images):
            frames = stage_frames(stage, [image], kit.boxes)
            if (r * len(images) + i) % 2:
                baseline(image)
                batch1.append(_timed(ours, frames, device=device))
            else:
                batch1.append(_timed(ours, frames, device=device))
                baseline(image)
        if r:
            batch4.append(_timed(ours, stage_frames(stage, four, kit.boxes), device=device) / 4)
    probes.append(matmul(kit.quick, device))
    total = [a + b for a, b in zip(loads, infers)]
    pairs = [b / o for b, o in zip(infers, batch1)]
    common = {"rss_imports_mb": imports_mb, "peak_reset": resettable}
    return {
        "ours": {"load_s": load_s, "flops": counter.get_total_flops(), "s_per_img_b1": _median(batch1),
                 "s_per_img_b4": _median(batch4), "b1_runs": batch1, "b4_runs": batch4, "peak_rss_mb": ours_peak,
                 "matmul_probes": probes, **ours_device, **common},
        "baseline": {"load_s": _median(loads), "infer_s_per_img": _median(infers), "s_per_img": _median(total),
                     "load_runs": loads, "infer_runs": infers, "peak_rss_mb": base_peak,
                     "infer_ratio_median": _median(pairs), **base_device, **common},
    }


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job description (see `run.py`) and return its numbers."""
    kit = Kit(quick=job["quick"], cache=Path(job["cache"]), official_gdino=job.get("official_gdino", True),
              device=job.get("device", "cpu"))
    kind = job["kind"]
    if kind == "prepare":
        kit.prepare(job["stages"])
        return {}
    if kind == "device":  # in a child: CUDA's first call must not happen in the parent that forks
        return {"found": torch.cuda.is_available()}
    if kind == "matmul":
        return matmul(job["quick"], kit.device)
    if kind == "stage":
        return stage_pair(kit, job["stage"], [Path(p) for p in job["paths"]], job["repeats"])
    if kind == "chain":
        import bench_chain

        return bench_chain.chain_pair(kit, Path(job["folder"]), job["repeats"], job["fast"])
    if kind == "chain_flops":
        import bench_chain

        return bench_chain.chain_flops(kit, Path(job["photo"]))
    raise ValueError(f"unknown job kind {kind!r}")
