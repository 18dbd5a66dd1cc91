"""The whole chain on one device through `recognize run`: exact fp32, bf16 autocast, and exact again.

`run.py --device cuda` measures the stage table on a GPU; this measures what a user of a GPU runs:
`ram_plus -> grounding_dino -> sam` writing JSON and an annotated image per photo, over a folder, on
the benchmark's random official-size checkpoints (`bench_models.Kit`; `--quick`: the tiny ones). Each
run's `summary.json` says where its wall time went (start-up, loading, each stage, writing). The exact
run is repeated last so that a slower first run (cold caches) shows. Then `recognize eval compare`
judges bf16 against exact on the same photos (on random weights: a check of the mechanics and an upper
bound on drift, not a fidelity figure for real weights).

    python benchmarks/bench_chain_device.py OUT [--device cuda] [--photos 8] [--quick] [--runs exact,bf16,exact]

`--runs exact_background_write,exact_inline_write,...` measures writing the outputs beside the next batch
against writing them between batches (`RECOGNIZE_BACKGROUND_WRITE=1` / `=0`); `--runs
exact_one_decoder,exact_decoders,...` preparing the next photos on one thread against one thread per photo of
a batch (`RECOGNIZE_PREFETCH_WORKERS=1` / `=auto`; `auto` is the default since 2026-12-04, so on a GPU `exact`
is `exact_decoders`, and the runs of `results_gpu_h200_chain_2026-12-04.json` named `exact` had one thread).
The kinds set only what they name: the rest comes from the environment the benchmark runs in.
`--chain tag` runs the tagger alone (`ram_plus`, JSON only): on a GPU its call is short enough that
preparing the photos, not the model, may set the pace, which is what the decoding threads are for.
`--chain data_engine` runs `recipes/data_engine.yaml`'s stages (ram_plus -> grounding_dino ->
region_confirm -> region_outliers, the confirm and outlier passes on the tagger's model; COCO, tags JSONL
and JSON out) with the chain's fixed tags and box cap, for `docs/scale.md`'s seconds a photo; `--max-side
N` shrinks the photos to a long side of N px first (web-sized photos: the reference ones are up to 13.8 MP).

`--runs demo,exact,...` adds the chain's reference: Grounded-SAM's demo (`reference_demo.py`) on the same
device, one fresh process per photo, as `bench_chain.py` runs it on the CPU. Its official Grounding DINO
runs in the official code's venv (`official_env.py`), built from the package index or, on a machine without
one, from `$RECOGNIZE_ORACLE_WHEELS`; with it both sides load the official Grounding DINO file. The report's
`against_demo` then gives each of our runs' photos per hour against the demo's (all demo runs' mean).

Writes OUT/chain_device.json (OUT/chain_device_<chain>.json for `--chain tag` or `data_engine`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from bench_chain import ours_folder, recipe, reference_photo, reference_spec, summarise_reference
from bench_models import Kit, default_cache, image_paths
from run import QUICK_MAX_SIDE, image_folder

#: bf16 autocast on Grounding DINO and SAM, as `bench_chain.fast_mode` names it
BF16 = {"grounding_dino": {"dtype": "bfloat16"}, "sam": {"dtype": "bfloat16"}}
#: the kinds of run: (a `bench_chain.fast_mode`-shaped dict, the environment added to the run's)
KINDS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "exact": ({}, {}),
    "bf16": (BF16, {}),
    # each photo's outputs written between batches, or beside the next batch, whatever the machine
    # (`recognize.engines.background_write`; by default: beside it where a GPU computes or a core is free)
    "exact_inline_write": ({}, {"RECOGNIZE_BACKGROUND_WRITE": "0"}),
    "exact_background_write": ({}, {"RECOGNIZE_BACKGROUND_WRITE": "1"}),
    # the next batch's photos decoded and resized on one thread, or on one thread per photo of a batch
    # where every stage computes on the GPU (`recognize.prefetch.workers_for`; the default)
    "exact_one_decoder": ({}, {"RECOGNIZE_PREFETCH_WORKERS": "1"}),
    "exact_decoders": ({}, {"RECOGNIZE_PREFETCH_WORKERS": "auto"}),
}
#: the Grounded-SAM demo: a fresh process per photo (`bench_chain.reference_photo`), the full chain only
DEMO = "demo"
#: the runs, in order, unless `--runs` names others (a kind named again is run again: `exact_again`)
RUNS = ("exact", "bf16", "exact")


def run_chain(kit: Kit, kind: str, args: argparse.Namespace, photos: Path, work: Path, name: str) -> dict[str, Any]:
    """One `recognize run` of the chain (`bench_chain.recipe` on `args.device`; Grounding DINO from our
    checkpoint layout, or from the official file where the demo runs too) over `photos`; a failed run is
    recorded, not raised."""
    fast, env = KINDS[kind]
    path = work / f"{name}.yaml"
    try:  # the recipe too: with the demo it needs the official Grounding DINO file, which needs its venv
        chain = recipe(kit, {**fast, "sam_model": args.sam_model}, device=args.device,
                       batch_size=args.batch_size, sam_batch_size=None, official_gdino=kit.official_gdino)
        if args.chain == "tag":
            chain = {**chain, "name": "tag", "stages": chain["stages"][:1], "outputs": [{"use": "json"}]}
        elif args.chain == "data_engine":
            chain = data_engine(chain)
        path.write_text(yaml.safe_dump(chain))
        found = ours_folder(path, photos, work / name, env)
    except Exception as error:
        return {"kind": kind, "rc": 1, "error": str(error)[-1500:]}
    files = {"grounding_dino_checkpoint": chain["stages"][1]["with"]["checkpoint"]} if len(chain["stages"]) > 1 else {}
    return {"kind": kind, "rc": 0, "wall_s": found["seconds"], **files, **found}


def data_engine(chain: dict[str, Any]) -> dict[str, Any]:
    """`chain` (a `bench_chain.recipe`) as `recipes/data_engine.yaml`: its tagger and Grounding DINO (fixed
    tags, every box up to the cap), then the confirm and outlier passes with the tagger's very parameters
    (so its model, and every crop judged at threshold 0: the work does not depend on random scores). No
    `merge_tags`: the photos have no given tags, so it would pass frames through."""
    tagger, grounding = chain["stages"][:2]
    judge = {"tagger": tagger["use"], "tagger_with": tagger["with"], "padding": 0.1}
    return {**chain, "name": "data_engine",
            "stages": [tagger, grounding,
                       {"use": "region_confirm", "with": {**judge, "drop_tags": "rejected"}},
                       {"use": "region_outliers", "with": {**judge, "k": 3, "drop_fraction": 0.1}}],
            "outputs": [{"use": "coco"}, {"use": "tags_jsonl"}, {"use": "json"}]}


def run_demo(kit: Kit, photos: Path, work: Path, name: str, sam_model: str) -> dict[str, Any]:
    """The demo over `photos`, one fresh process each, on the kit's device, with the SAM our runs use; a
    failure is recorded."""
    from official_env import official_python

    spec = work / f"{name}_spec.json"
    try:
        demo_spec = reference_spec(kit, sam_model)
        spec.write_text(json.dumps(demo_spec))
        python = official_python()
        runs = [reference_photo(python, spec, photo, work / f"{name}_{photo.stem}")
                for photo in sorted(p for p in photos.iterdir() if p.is_file())]
    except Exception as error:  # the venv, or one photo's process: recorded like a failed run of ours
        return {"kind": DEMO, "rc": 1, "error": str(error)[-1500:]}
    return {"kind": DEMO, "rc": 0, "wall_s": sum(run["seconds"] for run in runs), "sam_model": sam_model,
            "grounding_dino_checkpoint": demo_spec["grounding_dino"]["checkpoint"], **summarise_reference(runs)}


def against_demo(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each of our runs' photos per hour over the demo's (the mean seconds a photo of every demo run)."""
    demo = [entry["s_per_photo"] for entry in runs.values() if entry["kind"] == DEMO and not entry["rc"]]
    if not demo:
        return {}
    per_photo = sum(demo) / len(demo)
    return {name: per_photo / entry["s_per_photo"] for name, entry in runs.items()
            if entry["kind"] != DEMO and not entry["rc"]}


def _size(photo: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(photo) as image:
        return image.size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for chain_device.json")
    parser.add_argument("--device", default="cuda", help="the recipe's device (default cuda)")
    parser.add_argument("--photos", type=int, default=8, help="photos in the folder (cycled from the reference ones)")
    parser.add_argument("--quick", action="store_true", help="tiny models, photos shrunk to 256 px")
    parser.add_argument("--runs", default=",".join(RUNS),
                        help=f"the runs in order, of {', '.join([*KINDS, DEMO])} (default {','.join(RUNS)}); the "
                             "exact and bf16 runs' outputs are compared when both ran; demo: the Grounded-SAM demo "
                             "(full chain only)")
    parser.add_argument("--batch-size", type=int, default=4, help="the recipe's batch size (default 4)")
    parser.add_argument("--chain", choices=["full", "tag", "data_engine"], default="full",
                        help="full: ram_plus -> grounding_dino -> sam, JSON + annotated image (default); "
                             "tag: ram_plus alone, JSON; data_engine: ram_plus -> grounding_dino -> "
                             "region_confirm -> region_outliers, COCO + tags JSONL + JSON")
    parser.add_argument("--max-side", type=int, default=None,
                        help="shrink the photos to this long side in px first (default: as they are; quick: 256)")
    parser.add_argument("--sam-model", default="vit_h", choices=["vit_h", "vit_l", "vit_b"],
                        help="SAM's size (default vit_h; vit_b is the CPU's fast mode)")
    args = parser.parse_args(argv)
    runs = [name for name in args.runs.split(",") if name]
    if unknown := [name for name in runs if name not in KINDS and name != DEMO]:
        parser.error(f"--runs: unknown {', '.join(unknown)}; known: {', '.join([*KINDS, DEMO])}")
    if DEMO in runs and args.chain != "full":
        parser.error(f"--runs demo: the demo is the full chain; leave it out with --chain {args.chain}")
    # with the demo, both sides load the official Grounding DINO file (written by the official code)
    kit = Kit(quick=args.quick, cache=default_cache(), official_gdino=DEMO in runs, device=args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.out / ("chain_device.json" if args.chain == "full" else f"chain_device_{args.chain}.json")
    max_side = args.max_side or (QUICK_MAX_SIDE if args.quick else None)
    report: dict[str, Any] = {"device": args.device, "chain": args.chain, "photos": args.photos, "quick": args.quick,
                              "max_side": max_side, "batch_size": args.batch_size, "sam_model": args.sam_model,
                              "runs": {}}
    with tempfile.TemporaryDirectory(prefix="recognize-chain-") as tmp:
        work = Path(tmp)
        copies = image_folder(image_paths(args.photos), work, max_side)
        photos = copies[0].parent
        report["photo_sizes"] = [list(_size(copy)) for copy in copies]  # (width, height) as the runs read them
        for kind in runs:
            name = kind if kind not in report["runs"] else f"{kind}_again"
            name = name if name not in report["runs"] else f"{kind}_{len(report['runs'])}"
            if kind == DEMO:
                report["runs"][name] = run_demo(kit, photos, work, name, args.sam_model)
            else:
                report["runs"][name] = run_chain(kit, kind, args, photos, work, name)
            entry = report["runs"][name]
            print(f"{name}: rc {entry['rc']}" + (f", {entry['wall_s']:.1f} s" if not entry["rc"] else ""), file=sys.stderr)
            report["against_demo"] = against_demo(report["runs"])
            report_path.write_text(json.dumps(report, indent=1))  # kept if stopped later
        if {"exact", "bf16"} <= set(report["runs"]):
            proc = subprocess.run([sys.executable, "-m", "recognize", "eval", "compare", str(work / "exact"),
                                   str(work / "bf16"), str(photos), "-o", str(work / "compare")],
                                  capture_output=True, text=True, check=False)
            report["compare_exact_bf16"] = {"rc": proc.returncode, "table": proc.stdout[-4000:]}
            if (work / "compare" / "compare.json").is_file():
                report["compare_exact_bf16"]["json"] = json.loads((work / "compare" / "compare.json").read_text())
    report_path.write_text(json.dumps(report, indent=1))
    failed = [name for name, entry in report["runs"].items() if entry["rc"]] + (
        ["compare"] if report.get("compare_exact_bf16", {}).get("rc") else [])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
