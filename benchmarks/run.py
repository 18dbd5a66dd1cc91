"""Speed and memory of every stage, of the tag -> ground -> segment recipe and of the engines.

    python benchmarks/run.py                     # full run: official model sizes (random weights)
    python benchmarks/run.py --quick             # tiny models, seconds: what the test suite runs
    python benchmarks/run.py --stages sam,ram_plus --images 2 --repeats 1 --skip engines
    python benchmarks/run.py --device cuda        # the stage table on a GPU (both sides there)

Every figure comes with a baseline measured in the same run: the same work done the way the
reference Grounded-SAM demo does it (see `bench_baseline.py`), interleaved with ours in one
process so that a busy machine slows both alike. Writes `OUT.md` and `OUT.json` (`--out`, default
`benchmarks/results`). Each stage and the recipe run in a fresh forked process, each engine run in a
fresh interpreter (`bench_engines.py`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import bench_report
from bench_chain import CHAIN_STAGES
from bench_machine import COMPUTE_FLAGS, cpu_model_and_flags
from bench_models import (
    DEFAULT_IMAGES,
    DEFAULT_REPEATS,
    DEFAULT_STAGES,
    STAGES,
    TAGS,
    Kit,
    default_cache,
    image_paths,
)

PARTS = ("stages", "recipe", "engines")

#: Quick mode shrinks the photos to this long side (tiny models would time the image resize only).
QUICK_MAX_SIDE = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, 1 image, 1 repeat (for the tests)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="output path without suffix")
    parser.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                        help=f"comma-separated subset of {', '.join(STAGES)} (default: {', '.join(DEFAULT_STAGES)})")
    parser.add_argument("--images", type=int, default=None, help="images per measurement (default: 4; quick: 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per measurement (default: 2; quick: 1)")
    parser.add_argument("--recipe-repeats", type=int, default=1, help="passes of the recipe benchmark")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {', '.join(PARTS)}")
    parser.add_argument("--engine-images", type=int, default=None,
                        help="images of the engine benchmark (default: 8, two batches of 4; quick: 2)")
    parser.add_argument("--ray-workers", default="1,2", help="Ray worker counts for the engine benchmark")
    parser.add_argument("--engine-rounds", type=int, default=None,
                        help="rounds of the engine benchmark: local and Ray alternate, each in a fresh interpreter; "
                             "medians are reported (default: 3, as one round on a shared machine put one Ray worker "
                             "anywhere from 0.68x to 1.06x of the local engine; quick: 1)")
    parser.add_argument("--cache", type=Path, default=None, help="folder of the random checkpoints")
    parser.add_argument("--gdino-baseline", choices=["official", "ours"], default=None,
                        help="the baseline's Grounding DINO: the official code (rf-groundingdino in its own venv, "
                             "see official_env.py; the default on the CPU) or our model classes (the default on "
                             "cuda, where a GPU machine often has no package index: there the official one needs "
                             "RECOGNIZE_ORACLE_WHEELS, a folder of the venv's wheels)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where both sides of the stage table compute: cpu (default), or cuda (torch's current "
                             "GPU; CUDA_VISIBLE_DEVICES picks another) for the GPU table: the stages only, as the "
                             "recipe and engine parts are CPU benchmarks")
    args = parser.parse_args(argv)
    args.gdino_baseline = args.gdino_baseline or ("official" if args.device == "cpu" else "ours")
    args.stage_list = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(args.stage_list) - set(STAGES))
    skip = {s for s in args.skip.split(",") if s}
    if unknown or skip - set(PARTS):
        parser.error(f"unknown stage(s) or part(s): {', '.join(unknown + sorted(skip - set(PARTS)))}")
    args.parts = [p for p in PARTS if p not in skip and (args.device == "cpu" or p == "stages")]
    if args.device != "cpu" and set(PARTS) - skip - {"stages"}:
        print(f"--device {args.device}: the stage table only (the recipe and engine parts run on the CPU)",
              file=sys.stderr)
    args.images = args.images or (1 if args.quick else DEFAULT_IMAGES)
    args.repeats = args.repeats or (1 if args.quick else DEFAULT_REPEATS)
    args.engine_images = args.engine_images or (2 if args.quick else 8)
    if args.engine_rounds is None:
        args.engine_rounds = 1 if args.quick else 3
    args.cache = args.cache or default_cache()
    return args


# -- one job per forked process ---------------------------------------------------------------------
def _child(job: dict[str, Any], conn: Any) -> None:
    try:
        import bench_jobs

        conn.send(("ok", bench_jobs.run(job)))
    except BaseException as error:  # noqa: BLE001 - any failure is reported, the parent decides
        conn.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=6)}"))
    finally:
        conn.close()


def run_job(job: dict[str, Any], label: str, errors: list[str]) -> dict[str, Any] | None:
    """Run `job` in a forked child (the parent has imported, never computed: forking is safe)."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(job, send), daemon=False)
    start = time.perf_counter()
    print(f"  {label} ...", end="", file=sys.stderr, flush=True)
    process.start()
    send.close()
    try:
        status, payload = receive.recv()
    except EOFError:
        status, payload = "error", "the process died without a result (killed for memory?)"
    process.join()
    print(f" {time.perf_counter() - start:.1f} s{'' if status == 'ok' else ' FAILED'}", file=sys.stderr, flush=True)
    if status != "ok":
        errors.append(f"{label}: {payload.splitlines()[0]}")
        print(payload, file=sys.stderr)
        return None
    return payload


def run_fresh(job: dict[str, Any], label: str, errors: list[str]) -> dict[str, Any] | None:
    """Run an engine job (`bench_engines.py`) in a fresh interpreter, not a fork of this warm
    process, so that both engines pay their own imports inside the timed run (see that module)."""
    print(f"  {label} ...", end="", file=sys.stderr, flush=True)
    spawned = time.time()
    proc = subprocess.run([sys.executable, str(HERE / "bench_engines.py")], input=json.dumps({**job, "spawned": spawned}),
                          capture_output=True, text=True, check=False)
    print(f" {time.time() - spawned:.1f} s{'' if proc.returncode == 0 else ' FAILED'}", file=sys.stderr, flush=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        message = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        errors.append(f"{label}: {message}")
        print(proc.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def engine_rounds(kit: Kit, folder: str, workers: list[int], rounds: int,
                  errors: list[str]) -> dict[str, Any]:
    """Local and Ray runs alternating (local first in even rounds), each in a fresh interpreter
    (each Ray worker count in its own), so a machine shared with other work slows both alike; per
    engine the median run by `seconds`, with every run's seconds in `runs_s`."""
    runs: dict[str, list[dict[str, Any]]] = {}
    params = kit.stage_params("ram_plus")
    order = [("local", 1)] + [("ray", n) for n in workers]
    for r in range(max(1, rounds)):
        for engine, n in order if r % 2 == 0 else order[::-1]:
            job = {"engine": engine, "workers": n, "folder": folder, "params": params}
            label = f"engine {engine}" + (f" ({n} workers)" if engine == "ray" else "")
            found = run_fresh(job, f"{label}, round {r + 1}", errors) or {}
            for key, value in found.items():
                runs.setdefault(key, []).append(value)
    engines: dict[str, Any] = {}
    for key, found in runs.items():
        if key == "ray_init_s":
            engines[key] = sorted(found)[len(found) // 2]
            continue
        median = sorted(found, key=lambda run: run["seconds"])[len(found) // 2]
        engines[key] = {**median, "runs_s": [run["seconds"] for run in found],
                        "run_s_runs": [run["run_s"] for run in found]}
    return engines


def _warm_imports() -> None:
    """Import the heavy libraries once in the parent so each forked job starts in milliseconds."""
    import bench_baseline  # noqa: F401
    import bench_jobs  # noqa: F401
    import recognize_grounding_dino.model  # noqa: F401
    import recognize_sam.stage  # noqa: F401
    import segment_anything  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import GroundingDinoForObjectDetection  # noqa: F401

    from recognize import plugins

    plugins.get_stage("ram")


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    import segment_anything  # noqa: F401
    import torch
    import transformers

    cpu, flags = cpu_model_and_flags()
    memory = None
    try:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    from recognize import onednn_linear

    return {"cpu": cpu, "cpu_flags": [f for f in COMPUTE_FLAGS if f in flags], "cores": os.cpu_count(),
            # which fp32 GEMM the exact CPU paths ran (`onednn_linear.onednn_by_default`: by CPU)
            "gemm": "oneDNN" if onednn_linear.ONEDNN else "torch (MKL)",
            "memory_gib": memory, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "segment_anything": version("segment-anything"), "load_average_start": list(os.getloadavg())}


def image_folder(paths: list[Path], root: Path, max_side: int | None = None, name: str = "images") -> list[Path]:
    """`paths` copied into `root/images` as img_000.jpg, ... (what the recipe runs over); with
    `max_side`, shrunk to that long side (quick mode: full-size photos would dominate tiny models)."""
    from PIL import Image

    folder = root / name
    folder.mkdir()
    copies = []
    for i, path in enumerate(paths):
        target = folder / f"img_{i:03d}{path.suffix}"
        if max_side is None:
            shutil.copyfile(path, target)
        else:
            with Image.open(path) as image:
                image.thumbnail((max_side, max_side))
                image.save(target)
        copies.append(target)
    return copies


def code_revision() -> str | None:
    """The checkout's commit, short, with `-dirty` where tracked files differ from it: which code a results
    file measured (so its header says it without a hand edit). None outside a git checkout."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial.json")


def write_partial(out: Path, results: dict[str, Any], errors: list[str]) -> None:
    """What is measured so far, after each stage: a run stopped before its end (a time limit, a lent GPU
    machine given back) keeps its finished stages in `PATH.partial.json`. The full run removes it."""
    from recognize.atomic import write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(partial_path(out), json.dumps({**results, "errors": list(errors), "partial": True}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="recognize-bench-") as tmp:
        return _main(args, argv, Path(tmp))


def _main(args: argparse.Namespace, argv: list[str] | None, tmp: Path) -> int:
    kit = Kit(quick=args.quick, cache=args.cache, official_gdino=args.gdino_baseline == "official", device=args.device)
    originals = image_paths(args.images)
    paths = image_folder(originals, tmp, QUICK_MAX_SIDE if args.quick else None)
    folder = paths[0].parent
    base = {"quick": args.quick, "cache": str(args.cache), "official_gdino": kit.official_gdino, "device": kit.device}
    errors: list[str] = []
    results: dict[str, Any] = {
        "schema": 1,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "revision": code_revision(),
        "settings": {"quick": args.quick, "images": args.images, "repeats": args.repeats,
                     "recipe_repeats": args.recipe_repeats, "engine_images": args.engine_images, "stages": args.stage_list,
                     "parts": args.parts, "tags": list(TAGS), "boxes": kit.boxes,
                     "image_files": [p.name for p in originals],
                     "image_max_side": QUICK_MAX_SIDE if args.quick else None, "grounding_dino_size": list(kit.gd_size),
                     "grounding_dino_baseline": "official rf-groundingdino" if kit.official_gdino else "ours",
                     "device": kit.device},
    }
    _warm_imports()
    if args.device != "cpu" and not (run_job({**base, "kind": "device"}, f"device {args.device}", errors) or {}).get(
            "found"):
        print(f"error: --device {args.device}: torch sees no CUDA device here", file=sys.stderr)
        return 2
    results["machine"] = machine()
    needed = sorted(set(args.stage_list if "stages" in args.parts else [])
                    | ({"ram_plus", "grounding_dino", "sam"} if "recipe" in args.parts else set())
                    | ({"ram_plus"} if "engines" in args.parts else set()))
    print(f"recognize benchmarks ({'quick' if args.quick else 'full'}), checkpoints in {args.cache}", file=sys.stderr)
    run_job({**base, "kind": "prepare", "stages": needed}, f"random checkpoints for {', '.join(needed)}", errors)
    results["matmul"] = run_job({**base, "kind": "matmul"}, "matmul GFLOP/s", errors)

    if "stages" in args.parts:
        results["stages"] = {}
        for stage in args.stage_list:
            job = {**base, "kind": "stage", "stage": stage, "repeats": args.repeats, "paths": [str(p) for p in paths]}
            pair = run_job(job, f"stage {stage} (ours and baseline)", errors) or {}
            results["stages"][stage] = {"model": kit.describe(stage), **pair}
            write_partial(args.out, results, errors)

    if "recipe" in args.parts:
        from bench_chain import fast_mode

        fast = fast_mode(results["matmul"], results["machine"].get("cpu_flags"))
        job = {**base, "kind": "chain", "repeats": args.recipe_repeats, "folder": str(folder), "fast": fast}
        chain = run_job(job, f"chain tag_ground_segment (recognize run, fast mode {fast['name']}, demo per photo)",
                        errors)
        if chain is not None:
            stages = results.get("stages") or {}
            flops = {name: (stages.get(name) or {}).get("ours", {}).get("flops") for name in CHAIN_STAGES}
            source = "stage table (first photo)"
            if not all(flops.values()):
                flops = run_job({**base, "kind": "chain_flops", "photo": str(paths[0])}, "chain FLOPs", errors) or {}
                source = "counted on the first photo"
            chain["flops"] = {**flops, "source": source}
        results["recipe"] = chain
    if "engines" in args.parts:
        engine_paths = image_folder(image_paths(args.engine_images), tmp, QUICK_MAX_SIDE if args.quick else None,
                                    name="engine_images")
        folder = engine_paths[0].parent
        workers = [int(n) for n in args.ray_workers.split(",") if n]
        results["engines"] = engine_rounds(kit, str(folder), workers, args.engine_rounds, errors)

    results["matmul_end"] = run_job({**base, "kind": "matmul"}, "matmul GFLOP/s (again, at the end)", errors)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["errors"] = errors
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from recognize.atomic import write_text

    write_text(args.out.with_suffix(".json"), json.dumps(results, indent=2) + "\n")
    write_text(args.out.with_suffix(".md"), bench_report.render(results))
    partial_path(args.out).unlink(missing_ok=True)
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
