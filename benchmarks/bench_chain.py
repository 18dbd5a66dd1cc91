"""tag -> ground -> segment on a folder: `recognize run` against the Grounded-SAM demo, side by side.

Ours: `recognize run RECIPE FOLDER -o OUT` in ONE process (`python -m recognize`): the structure of
`recipes/tag_ground_segment.yaml` (ram_plus -> grounding_dino -> sam, batch 2, JSON +
`annotated_image` outputs), its default settings except what makes both sides do equal work with
random weights: RAM++ keeps the fixed tags (`include` + threshold 0), Grounding DINO keeps every box
(thresholds 0) up to `max_regions` per photo, device cpu. The fast row is the same recipe with the
best fast mode this machine supports (`fast_mode`). The reference: `reference_demo.py` (the demo's
steps, in the official Grounding DINO venv) in a fresh process per photo, with the same checkpoint
files, photos, tags and box cap.

Fidelity: `recognize eval compare` of the exact and the fast run's output folders (exact as side A):
tag agreement, paired boxes and mask IoU, on random weights (see `fast_fidelity`).

Interleaving: the reference's photos are split in two halves, run before and after our runs
(reference 1st half -> ours exact -> ours fast -> reference 2nd half), so a machine that gets busier
or quieter during the run moves both sides' averages alike. Every side runs as a child process
reaped with `os.wait4`, so its peak RSS is that process's own (`ru_maxrss`), imports included.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from bench_models import REPO, TAGS, Kit

from recognize.fast_modes import CPU_FLAGS_FOR

CHAIN_STAGES = ("ram_plus", "grounding_dino", "sam")
#: random weights give meaningless scores: every box passes, the cap gives both sides the same SAM work
BOX_THRESHOLD = TEXT_THRESHOLD = 0.0
#: the demo's NMS IoU threshold
IOU_THRESHOLD = 0.5
DEMO = Path(__file__).resolve().parent / "reference_demo.py"


def chain_env() -> dict[str, str]:
    """PYTHONPATH with this checkout's packages first, for both sides' child processes."""
    paths = [str(REPO), str(REPO / "plugins" / "recognize-grounding-dino"), str(REPO / "plugins" / "recognize-sam"),
             os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "MPLBACKEND": "Agg"}


#: CPU flags with int8 dot-product instructions: torchao's int8 Linear pays off only with one of them
INT8_FLAGS = CPU_FLAGS_FOR[("quantize", "int8")]


def fast_mode(matmul: dict[str, Any] | None, flags: list[str] | None = None) -> dict[str, Any]:
    """The best fast mode measured for this machine: bf16 autocast on Grounding DINO and SAM where a
    bf16 matmul beats fp32 (AMX, avx512_bf16, GPUs); else torchao int8 Linear layers where the CPU has
    int8 dot products (`INT8_FLAGS`) and torchao is installed; else SAM vit_b, the lighter SAM (~8x fewer
    encoder FLOPs than vit_h), which is a fast mode on any CPU. Why not int8 everywhere: on an AVX2-only
    CPU without VNNI one int8 chain batch of 2 photos had not finished after 20 minutes (exact: ~51 s per
    photo). `flags`: the CPU's compute flags (`run.py`'s `machine()["cpu_flags"]`, which keeps every flag
    of `INT8_FLAGS`)."""
    fp32, bf16 = (matmul or {}).get("gflops"), (matmul or {}).get("gflops_bf16")
    if fp32 and bf16 and bf16 > fp32:
        return {"name": "bf16 autocast", "grounding_dino": {"dtype": "bfloat16"}, "sam": {"dtype": "bfloat16"},
                "why": f"bf16 matmul {bf16:.0f} GFLOP/s > fp32 {fp32:.0f}"}
    slower = f"bf16 matmul {bf16 or 0:.1f} GFLOP/s <= fp32 {fp32 or 0:.0f}: bf16 would be slower"
    int8_flags = [f for f in INT8_FLAGS if f in (flags or [])]
    if int8_flags and importlib.util.find_spec("torchao") is not None:
        return {"name": "int8 (torchao)", "grounding_dino": {"quantize": "int8"}, "sam": {"quantize": "int8"},
                "why": f"{slower}; int8 dot products ({', '.join(int8_flags)})"}
    missing = ("torchao is missing" if int8_flags
               else f"no int8 dot products ({' / '.join(INT8_FLAGS)}): int8 would be slower too")
    return {"name": "SAM vit_b", "grounding_dino": {}, "sam": {}, "sam_model": "vit_b",
            "why": f"{slower}; {missing}; the lighter SAM instead"}


def recipe(kit: Kit, fast: dict[str, Any] | None = None, *, device: str = "cpu", batch_size: int = 2,
           sam_batch_size: int | None = 1, official_gdino: bool = True) -> dict[str, Any]:
    """Our side's recipe (YAML-able): the same files the reference loads. `fast`: a `fast_mode` dict. The
    other arguments are for `bench_chain_device.py` (the chain on a device): `sam_batch_size=None` leaves SAM's
    own, and `official_gdino=False` loads our Grounding DINO file where the demo does not run beside it (the
    official file needs the official code's venv to be written)."""
    fast = fast or {}
    gd = kit.gd_params()
    if official_gdino:
        gd["checkpoint"] = json.loads(kit.official_gdino_spec().read_text())["checkpoint"]  # the official file
    sam_batch = {} if sam_batch_size is None else {"batch_size": sam_batch_size}
    return {
        "recipe": 1,
        "name": "tag_ground_segment",
        "settings": {"batch_size": batch_size, "device": device},
        "stages": [
            {"use": "ram_plus", "with": {**kit.tagger_params("ram_plus"), "include": list(TAGS), "threshold": 0.0}},
            {"use": "grounding_dino", "with": {**gd, "box_threshold": BOX_THRESHOLD, "text_threshold": TEXT_THRESHOLD,
                                               "max_regions": kit.boxes, **fast.get("grounding_dino", {})}},
            {"use": "sam", "with": {**kit.sam_params(fast.get("sam_model", "vit_h")), **sam_batch,
                                    **fast.get("sam", {})}},
        ],
        "outputs": [{"use": "annotated_image"}, {"use": "json"}],
    }


def reference_spec(kit: Kit, sam_model: str = "vit_h") -> dict[str, Any]:
    """What `reference_demo.py` loads and keeps: the same files, tags and box cap as our recipe, on the
    kit's device (`sam_model`: the SAM our side runs)."""
    return {"device": kit.device, "ram_plus": kit.tagger_params("ram_plus"),
            "grounding_dino": json.loads(kit.official_gdino_spec().read_text()), "sam": kit.sam_params(sam_model),
            "tags": list(TAGS), "tag_threshold": 0.0, "box_threshold": BOX_THRESHOLD, "text_threshold": TEXT_THRESHOLD,
            "iou_threshold": IOU_THRESHOLD, "max_boxes": kit.boxes, "grounding_dino_size": list(kit.gd_size)}


def run_child(command: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run `command` to its end (`env`: added to `chain_env()`): (wall seconds, its peak RSS in MiB, its
    stdout). Raises on failure."""
    with open(log, "w") as errors, tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=errors, env={**chain_env(), **(env or {})}, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Popen.wait would not give it)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stdout = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(command[1]).name if len(command) > 1 else command[0]} failed "
                           f"({proc.returncode}): {log.read_text()[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stdout  # ru_maxrss: KiB on Linux


def reference_photo(python: Path, spec: Path, photo: Path, out: Path) -> dict[str, Any]:
    """One demo run for one photo, in a fresh process."""
    wall, peak, stdout = run_child([str(python), str(DEMO), str(spec), str(photo), str(out)], out.with_suffix(".log"))
    found = json.loads(stdout.strip().splitlines()[-1])
    parts = found["parts"]
    named = {"startup": found["startup"], **parts}
    named["other"] = max(0.0, wall - sum(named.values()))  # interpreter exit, and what the marks miss
    return {"photo": photo.name, "seconds": wall, "parts": named, "cold_start": found["cold_start"],
            "tags": found["tags"], "regions": found["boxes"], "masks": found["masks"], "peak_rss_mb": peak,
            "peak_rss_mb_inside": found["peak_rss_mb"],  # VmHWM read by the demo itself: a cross-check
            "threads": found["threads"], "device": found.get("device"), "files": sorted(p.name for p in out.iterdir())}


def ours_folder(recipe_path: Path, folder: Path, out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`recognize run` over the folder in one process; its summary.json says where the time went."""
    from recognize.outputs.json_output import read_frame

    command = [sys.executable, "-m", "recognize", "run", str(recipe_path), str(folder), "-o", str(out), "--quiet"]
    wall, peak, _ = run_child(command, out.with_name(out.name + ".log"), env)
    summary = json.loads((out / "summary.json").read_text())
    frames = [read_frame(p) for p in sorted((out / "frames").glob("*.json"))]
    photos = summary["counts"]["processed"]
    if summary["counts"]["failed"] or photos != len(frames):
        raise RuntimeError(f"recognize run: {summary['counts']} {summary['failures'][:1]}")
    return {"photos": photos, "seconds": wall, "s_per_photo": wall / photos, "cold_start": summary.get("cold_start"),
            "counts": summary["counts"], "wall": summary["wall"], "overlapped": summary.get("overlapped", {}),
            "stage_seconds": {k: v["seconds"] for k, v in summary["timings"].items()},
            "fast_modes": summary.get("fast_modes", {}), "peak_rss_mb": peak,
            "tags_per_img": _mean(len(f.tags) for f in frames), "regions_per_img": _mean(len(f.regions) for f in frames),
            "masks_per_img": _mean(sum(r.mask is not None for r in f.regions) for f in frames),
            "annotated_images": len(list((out / "frames").glob("*.annotated.*")))}


def chain_pair(kit: Kit, folder: Path, repeats: int, fast: dict[str, Any]) -> dict[str, Any]:
    """Both sides over the same photos, interleaved (module docstring); per repeat, medians kept."""
    from official_env import official_python

    python = official_python()
    photos = sorted(p for p in folder.iterdir() if p.is_file())
    half = (len(photos) + 1) // 2
    reference_runs: list[dict[str, Any]] = []
    ours_runs: dict[str, list[dict[str, Any]]] = {"ours": [], "fast": []}
    with tempfile.TemporaryDirectory(prefix="recognize-chain-") as tmp:
        root = Path(tmp)
        spec = root / "reference_spec.json"
        spec.write_text(json.dumps(reference_spec(kit)))
        recipes = {"ours": root / "ours.yaml", "fast": root / "fast.yaml"}
        recipes["ours"].write_text(yaml.safe_dump(recipe(kit)))
        recipes["fast"].write_text(yaml.safe_dump(recipe(kit, fast)))
        for r in range(repeats):
            def reference(part: list[Path], r: int = r) -> None:
                for photo in part:
                    reference_runs.append(reference_photo(python, spec, photo, root / f"ref{r}_{photo.stem}"))
            reference(photos[:half])
            for side in ("ours", "fast"):
                ours_runs[side].append(ours_folder(recipes[side], folder, root / f"{side}{r}"))
            reference(photos[half:])
        fidelity = fast_fidelity(root / "ours0", root / "fast0", root / "compare")
    result: dict[str, Any] = {"order": "reference 1st half -> ours -> ours fast -> reference 2nd half",
                              "photos": len(photos), "repeats": repeats, "fast_mode": fast,
                              "reference": summarise_reference(reference_runs), "fidelity": fidelity}
    for side, runs in ours_runs.items():
        best = sorted(runs, key=lambda run: run["s_per_photo"])[len(runs) // 2]  # the median run
        result[side] = {**best, "runs_s_per_photo": [run["s_per_photo"] for run in runs]}
    return result


def fast_fidelity(exact: Path, fast: Path, out: Path) -> dict[str, Any]:
    """How far the fast mode moved the outputs: `recognize eval compare EXACT FAST` over the two run
    folders (the CLI a user runs on their own photos), exact as side A. With random weights this says
    how much the mode perturbs these models' outputs, not how it scores on real photos."""
    command = [sys.executable, "-m", "recognize", "eval", "compare", str(exact), str(fast), "-o", str(out), "--quiet"]
    run_child(command, out.with_name(out.name + ".log"))
    found = json.loads((out / "compare.json").read_text())
    return {"weights": "random", "a": "exact", "b": "fast", "match_iou": found["match_iou"],
            "overall": found["overall"], "images": found["images"]}


def summarise_reference(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-photo means over every reference run (a photo's time is its process's wall time)."""
    names = list(dict.fromkeys(name for run in runs for name in run["parts"]))
    return {"photos": len(runs), "s_per_photo": _mean(run["seconds"] for run in runs),
            "parts": {name: _mean(run["parts"].get(name, 0.0) for run in runs) for name in names},
            "cold_start": _mean(run["cold_start"] for run in runs),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
            "tags_per_img": _mean(run["tags"] for run in runs), "regions_per_img": _mean(run["regions"] for run in runs),
            "masks_per_img": _mean(run["masks"] for run in runs), "files": runs[0]["files"], "runs": runs}


def chain_flops(kit: Kit, photo: Path) -> dict[str, Any]:
    """FLOPs of one photo through each chain stage (`FlopCounterMode`, as the stage table counts them: the
    FLOPs executed, the tagger warm), for when the stage table did not measure all three."""
    from bench_jobs import counting_flops, load_images, make_stage

    from recognize.frame import Frame
    from recognize.pipeline import Pipeline

    stages = [make_stage(kit, "ram_plus", include=list(TAGS), threshold=0.0),
              make_stage(kit, "grounding_dino", box_threshold=BOX_THRESHOLD, text_threshold=TEXT_THRESHOLD,
                         max_regions=kit.boxes),
              make_stage(kit, "sam")]
    pipeline = Pipeline(stages, batch_size=1, device="cpu")
    pipeline.load()
    frames = [Frame.from_array(load_images([photo])[0], source=photo.name)]
    stages[0]([Frame.from_array(frames[0].image, source=photo.name)])  # warm: reused results not counted
    flops = {}
    for stage in stages:
        with counting_flops() as counter:
            frames = stage(frames)
        flops[stage.name] = counter.get_total_flops()
    return flops


def _mean(values) -> float:
    values = list(values)
    return float(statistics.fmean(values)) if values else float("nan")
