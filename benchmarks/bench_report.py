"""The results as Markdown: the machine, then one table per benchmark, each figure beside its baseline."""

from __future__ import annotations

import math
from typing import Any


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"


def _ratio(a: Any, b: Any) -> str:
    try:
        return f"{a / b:.2f}x" if a and b else "–"
    except TypeError:
        return "–"


def machine_lines(results: dict[str, Any]) -> list[str]:
    m, mm = results["machine"], results.get("matmul") or {}
    load = m.get("load_average_start")
    lines = [
        (f"- Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB RAM, "
        f"{m.get('platform', '?')}"),
        (f"- Software: Python {m.get('python')}, torch {m.get('torch')} ({mm.get('threads', '?')} threads), "
        f"transformers {m.get('transformers')}, segment-anything {m.get('segment_anything')}"),
        (f"- fp32 matmul ({mm.get('n', '?')}x{mm.get('n', '?')}): **{_num(mm.get('gflops'), 1)} GFLOP/s** "
        f"(best run {_num(mm.get('gflops_best'), 1)})"
        + (f"; bf16 matmul: **{_num(mm['gflops_bf16'], 1)} GFLOP/s** (best run {_num(mm.get('gflops_bf16_best'), 1)})"
           if mm.get("gflops_bf16") else "")
        + (f"; fp32 through oneDNN: "
           f"**{_num(mm['gflops_onednn'], 1)} GFLOP/s** (best run {_num(mm.get('gflops_onednn_best'), 1)})"
           if mm.get("gflops_onednn") else "")
        + (f". The exact CPU paths' GEMM in this run: {m['gemm']} (`recognize/onednn_linear.py`: oneDNN on "
           f"AVX-512 CPUs, torch's own elsewhere)" if m.get("gemm") and not on_gpu(results) else "")),
    ]
    if mm.get("device_name"):
        precision = mm.get("float32_matmul_precision", "?")
        lines.insert(1, f"- GPU: {mm['device_name']} (`--device {mm.get('device')}`: both sides of the stage table "
                        f"compute there, cuDNN without TF32; the matmul probes ran there, fp32 at torch's "
                        f"float32 matmul precision {precision!r}"
                        + (", i.e. without TF32)" if precision == "highest" else ")"))
    end = results.get("matmul_end") or {}
    if end.get("gflops"):
        onednn = "" if on_gpu(results) else f", oneDNN {_num(end.get('gflops_onednn'), 1)}"  # a CPU probe
        lines.append(f"- The same probes at the run's end: fp32 `a @ b` {_num(end['gflops'], 1)}{onednn}, "
                     f"bf16 {_num(end.get('gflops_bf16'), 1)} GFLOP/s (the chain's FLOP limit uses the start's)")
    if m.get("cpu_flags") is not None:
        lines.insert(1, f"- CPU flags (compute): {' '.join(m['cpu_flags']) or 'none of avx/avx2/avx512/amx'}")
    if load:
        end = m.get("load_average_end") or ["?"]
        lines.append(f"- Load average (1 min) at start / end: {load[0]:.2f} / "
                     f"{end[0] if isinstance(end[0], str) else f'{end[0]:.2f}'} (other work on the machine skews "
                     "absolute times; the ratios are measured side by side)")
    return lines


def stage_rates(results: dict[str, Any], ours: dict[str, Any]) -> tuple[float | None, float | None]:
    """(fp32 `a @ b`, oneDNN) GFLOP/s a stage's rate is divided by: the higher of the probes taken in the
    stage's own process around its timed passes (`bench_jobs.stage_pair`), else the run's probe."""
    probes = ours.get("matmul_probes") or [results.get("matmul") or {}]
    best = {key: max((p[key] for p in probes if p.get(key)), default=None) for key in ("gflops", "gflops_onednn")}
    return best["gflops"], best["gflops_onednn"]


def on_gpu(results: dict[str, Any]) -> bool:
    """A `--device cuda` run: its matmul probes name the GPU, its stages report GPU memory."""
    return bool((results.get("matmul") or {}).get("device_name")) or any(
        "peak_device_mb" in (entry.get("ours") or {}) for entry in results.get("stages", {}).values())


def stage_table(results: dict[str, Any]) -> list[str]:
    gpu = on_gpu(results)
    rows = [
        ("| stage | model | GFLOP/img | load s | baseline load s | s/img b1 | s/img b4 | img/s (best) | baseline s/img "
        "| speedup b1 | speedup b4 | compute ratio | GFLOP/s (best) | % of matmul "
        + ("" if gpu else "| % of oneDNN matmul ")  # oneDNN is a CPU GEMM
        + "| peak RSS MiB b4 | baseline peak RSS MiB |"
        + (" peak GPU MiB b4 | baseline peak GPU MiB |" if gpu else "")),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|---:|" if gpu else "---:|"),
    ]
    for name, entry in results.get("stages", {}).items():
        ours, base = entry.get("ours") or {}, entry.get("baseline") or {}
        peak, onednn = stage_rates(results, ours)
        flops = ours.get("flops")
        b1, b4 = ours.get("s_per_img_b1"), ours.get("s_per_img_b4")
        best = min((t for t in (b1, b4) if t and not math.isnan(t)), default=None)
        achieved = flops / best / 1e9 if flops and best else None
        ratio = base.get("infer_ratio_median")
        rows.append("| " + " | ".join([
            name, entry.get("model", ""), _num(flops / 1e9 if flops else None, 1),
            _num(ours.get("load_s")), _num(base.get("load_s")),
            _num(b1), _num(b4), _num(1 / best if best else None),
            _num(base.get("s_per_img")), _ratio(base.get("s_per_img"), b1), _ratio(base.get("s_per_img"), b4),
            f"{ratio:.2f}x" if ratio else "–",
            _num(achieved, 1), f"{100 * achieved / peak:.0f}%" if achieved and peak else "–",
            *([] if gpu else [f"{100 * achieved / onednn:.0f}%" if achieved and onednn else "–"]),
            _num(ours.get("peak_rss_mb"), 0), _num(base.get("peak_rss_mb"), 0),
            *([_num(ours.get("peak_device_mb"), 0), _num(base.get("peak_device_mb"), 0)] if gpu else []),
        ]) + " |")
    return rows


def _chain_limit(chain: dict[str, Any], rate: float | None) -> tuple[float | None, float | None]:
    """(chain GFLOP per photo, seconds per photo at `rate` GFLOP/s: the chain's FLOP limit)."""
    flops = chain.get("flops") or {}
    total = sum(flops.get(name) or 0 for name in ("ram_plus", "grounding_dino", "sam"))
    if not total:
        return None, None
    return total / 1e9, (total / 1e9 / rate if rate else None)


def _reference_split(ref: dict[str, Any]) -> dict[str, float]:
    parts = ref.get("parts") or {}
    return {"startup": parts.get("startup"), "load": sum(v for k, v in parts.items() if k.startswith("load_")),
            "decode": parts.get("decode"), "ram_plus": parts.get("ram"), "grounding_dino": parts.get("grounding_dino"),
            "sam": parts.get("sam"), "draw_write": parts.get("draw_save"), "other": parts.get("other")}


def _ours_split(run: dict[str, Any]) -> dict[str, float]:
    """Our folder run's parts, per photo (start-up and load are paid once for the folder)."""
    n = run.get("photos") or 1
    wall, stages = run.get("wall") or {}, run.get("stage_seconds") or {}
    exited = max(0.0, (run.get("seconds") or 0) - sum(wall.values()))  # interpreter exit, outside summary.json
    load = None if wall.get("load") is None else wall["load"] + (wall.get("load_wait") or 0)  # + waiting for a background load
    split = {"startup": wall.get("startup"), "load": load, "decode": wall.get("decode"),
             **{name: stages.get(name) for name in ("ram_plus", "grounding_dino", "sam")},
             "draw_write": (wall.get("write") or 0) + (wall.get("finish") or 0),
             # release: unmapping idle weights between stages (summary.json's own entry since it left the stages);
             # prepare: listing the photos and checking them against OUT (in summary.json since 2026-12-03)
             "other": (wall.get("other") or 0) + (wall.get("retried") or 0) + (wall.get("release") or 0)
                      + (wall.get("prepare") or 0) + exited}
    return {k: (v / n if v is not None else None) for k, v in split.items()}


def _io(split: dict[str, float | None]) -> float:
    """A photo's image I/O seconds: decoding it and drawing + writing its outputs."""
    return (split.get("decode") or 0.0) + (split.get("draw_write") or 0.0)


def _fidelity_cell(fidelity: dict[str, Any]) -> str:
    """The fast row's agreement with the exact row, in one cell (`recognize eval compare`)."""
    o = fidelity.get("overall") or {}
    if not o:
        return "–"
    return (f"tags J {_num(o.get('tag_jaccard'))}; boxes {o.get('matched', 0)}/{o.get('regions_a', 0)} paired, "
            f"IoU {_num(o.get('mean_box_iou'))}; masks IoU {_num(o.get('mean_mask_iou'))}")


def fidelity_lines(chain: dict[str, Any]) -> list[str]:
    """What `recognize eval compare` said about the fast mode, labelled as measured on random weights."""
    fidelity = chain.get("fidelity") or {}
    o = fidelity.get("overall")
    if not o:
        return []
    mode = (chain.get("fast_mode") or {}).get("name", "?")
    return [(f"Fidelity of the fast mode ({mode}), **on random weights**: `recognize eval compare` of the exact "
             f"run's output folder (A) and the fast run's (B) over the same {o.get('images')} photo(s): tag Jaccard "
             f"{_num(o.get('tag_jaccard'))}, largest tag score difference {_num(o.get('max_tag_score_diff'), 3)}; "
             f"regions A/B {o.get('regions_a')}/{o.get('regions_b')}, {o.get('matched')} paired per tag at IoU >= "
             f"{fidelity.get('match_iou')} ({o.get('unmatched_a')} / {o.get('unmatched_b')} unpaired), mean box IoU "
             f"{_num(o.get('mean_box_iou'), 3)}, largest box score difference "
             f"{_num(o.get('max_region_score_diff'), 3)}; mean mask IoU {_num(o.get('mean_mask_iou'), 3)} over "
             f"{o.get('masks_compared')} paired masks. Random weights give scores without meaning and often close "
             "together, so which boxes pass the cap can flip with small numeric changes more readily than with "
             "trained weights; with real weights, run the same command on your own photos.")]


def work_lines(results: dict[str, Any], rows: dict[str, dict[str, Any]]) -> list[str]:
    """Whether every row segmented the same number of boxes per photo (the cap), and what that cap is."""
    cap = (results.get("settings") or {}).get("boxes")
    counts = {key: (r.get("tags_per_img"), r.get("regions_per_img"), r.get("masks_per_img"))
              for key, r in rows.items() if r}
    if not cap or not counts:
        return []
    same = len(set(counts.values())) == 1
    full = all(regions == cap and masks == cap for _, regions, masks in counts.values())
    if same and full:
        return [(f"Equal work: every row tagged, localized and segmented the same per photo "
                 f"({_num(next(iter(counts.values()))[0], 1)} tags, {cap} box(es) and {cap} mask(s): the cap).")]
    detail = "; ".join(f"{key} {_num(regions, 1)} boxes / {_num(masks, 1)} masks"
                       for key, (_, regions, masks) in counts.items())
    return [(f"**Unequal or short work**: per photo {detail}, cap {cap}. Below the cap, the random Grounding DINO "
             "checkpoint left fewer boxes after NMS than the cap; rows that differ did different SAM work, and "
             "their ratios are not comparable.")]


def recipe_table(results: dict[str, Any]) -> list[str]:
    chain = results.get("recipe") or {}
    mm = results.get("matmul") or {}
    ref, ours, fast = chain.get("reference") or {}, chain.get("ours") or {}, chain.get("fast") or {}
    gflop, limit = _chain_limit(chain, mm.get("gflops"))
    _, limit_bf16 = _chain_limit(chain, mm.get("gflops_bf16"))
    fast_mode = (chain.get("fast_mode") or {}).get("name", "?")
    compute = {"reference": _reference_split(ref), "ours": _ours_split(ours), "fast": _ours_split(fast)}
    rows = [
        ("| run | photos | s/photo | photos/h | vs reference | cold start s | peak RSS MiB | FLOP limit s/photo "
         "| compute ÷ limit | wall ÷ limit | (wall − I/O) ÷ limit | tags/img | regions/img | masks/img "
         "| fidelity vs exact (random weights) |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = ref.get("s_per_photo")
    bf16_row = "bf16" in fast_mode and limit_bf16 is not None
    # a lighter model in the fast row (SAM vit_b) does other work: the exact chain's FLOP limit is not its own
    fast_limit = None if (chain.get("fast_mode") or {}).get("sam_model") else limit_bf16 if bf16_row else limit
    for key, r, label, lim in (
            ("reference", ref, "reference: the demo, one process per photo", limit),
            ("ours", ours, "recognize run (exact), one process for the folder", limit),
            ("fast", fast, f"recognize run, fast mode: {fast_mode}", fast_limit)):
        split = compute[key]
        work = sum(split.get(name) or 0 for name in ("ram_plus", "grounding_dino", "sam")) or None
        per = r.get("s_per_photo")
        rows.append("| " + " | ".join([
            label, _num(r.get("photos")), _num(per), _num(3600 / per if per else None, 1), _ratio(base, per),
            _num(r.get("cold_start")), _num(r.get("peak_rss_mb"), 0),
            _num(lim) + (" (bf16)" if key == "fast" and bf16_row else ""),
            _ratio(work, lim), _ratio(per, lim), _ratio(per - _io(split) if per else None, lim),
            _num(r.get("tags_per_img"), 1), _num(r.get("regions_per_img"), 1), _num(r.get("masks_per_img"), 1),
            _fidelity_cell(chain.get("fidelity") or {}) if key == "fast" else "–",
        ]) + " |")
    rows += ["", "Where a photo's seconds go (ours: the folder run's `summary.json` `wall` and stage timings "
             "÷ photos; its start-up and load are paid once per folder):", "",
             "| run | start-up | load | decode | RAM++ | Grounding DINO | SAM | draw + write | other |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, label in (("reference", "reference (per photo)"), ("ours", "ours exact"), ("fast", f"ours {fast_mode}")):
        split = compute[key]
        rows.append("| " + " | ".join([label, *(_num(split.get(name)) for name in (
            "startup", "load", "decode", "ram_plus", "grounding_dino", "sam", "draw_write", "other"))]) + " |")
    rows.append("")
    rows.append(f"Ratio (ours photos/hour ÷ reference photos/hour): exact **{_ratio(base, ours.get('s_per_photo'))}**, "
                f"fast mode ({fast_mode}) **{_ratio(base, fast.get('s_per_photo'))}** (issue 11's target: >= 3x).")
    exact_per = ours.get("s_per_photo")
    if exact_per and limit:
        beyond = exact_per - _io(compute["ours"])
        rows.append(f"The exact chain against its FLOP limit plus image I/O: (s/photo − I/O) ÷ limit = "
                    f"({_num(exact_per)} − {_num(_io(compute['ours']))}) ÷ {_num(limit)} = **{_ratio(beyond, limit)}** "
                    f"(issue 11's target: <= 1.3x; I/O = decode + draw/write per photo from `summary.json`; the "
                    f"reference: {_ratio((base or 0) - _io(compute['reference']), limit)}).")
        _, limit_onednn = _chain_limit(chain, mm.get("gflops_onednn"))
        if limit_onednn:
            faster = (mm.get("gflops_onednn") or 0) > (mm.get("gflops") or 0)
            rows.append(f"Against oneDNN's fp32 GEMM rate ({_num(mm.get('gflops_onednn'), 1)} GFLOP/s, "
                        f"{'the faster' if faster else 'not the faster'} fp32 "
                        f"GEMM on this machine) the limit is {_num(limit_onednn)} s/photo and the same ratio "
                        f"**{_ratio(beyond, limit_onednn)}**.")
    if gflop:
        flops = chain.get("flops") or {}
        split = ", ".join(f"{name} {flops[name] / 1e9:.1f}" for name in ("ram_plus", "grounding_dino", "sam")
                          if flops.get(name))
        rows.append(f"FLOP limit: {gflop:.1f} GFLOP per photo ({split}; {flops.get('source', '?')}) ÷ the fp32 "
                    f"matmul rate {_num(mm.get('gflops'), 1)} GFLOP/s"
                    + (f" (fast bf16 row: ÷ the bf16 rate {_num(mm.get('gflops_bf16'), 1)})" if bf16_row else "")
                    + "; compute = the three stages' seconds per photo, wall = all of "
                    "s/photo.")
    rows += work_lines(results, {"reference": ref, "exact": ours, "fast": fast})
    rows += fidelity_lines(chain)
    why = (chain.get("fast_mode") or {}).get("why")
    if why:
        rows.append(f"Fast mode chosen from the measured matmul rates and the CPU's flags: {why}.")
    if chain.get("order"):
        rows.append(f"Order of the runs: {chain['order']}; reference files per photo: "
                    f"{', '.join(ref.get('files') or [])}.")
    return rows


def legacy_recipe_table(results: dict[str, Any]) -> list[str]:
    """The table of runs before issue 11's chain (our Pipeline and an in-process baseline), so their JSON still renders."""
    recipe = results.get("recipe") or {}
    rows = [
        "| run | images | load s | s/img | img/s | tags/img | regions/img | masks/img | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for side, label in (("ours", "recognize Pipeline, batch 4 (models loaded once)"),
                        ("baseline", "baseline: demo per image (models loaded per image)")):
        r = recipe.get(side) or {}
        rows.append("| " + " | ".join([
            label, _num(r.get("images")), _num(r.get("load_s")), _num(r.get("s_per_img")),
            _num(1 / r["s_per_img"] if r.get("s_per_img") else None), _num(r.get("tags_per_img"), 1),
            _num(r.get("regions_per_img"), 1), _num(r.get("masks_per_img"), 1), _num(r.get("peak_rss_mb"), 0),
        ]) + " |")
    ours, base = recipe.get("ours") or {}, recipe.get("baseline") or {}
    rows.append("")
    rows.append(f"Speedup (baseline s/img ÷ ours s/img): **{_ratio(base.get('s_per_img'), ours.get('s_per_img'))}**; "
                f"ours including its one-off load: "
                f"{_ratio(base.get('seconds'), (ours.get('seconds') or 0) + (ours.get('load_s') or 0))}.")
    if ours.get("stage_seconds"):
        split = ", ".join(f"{k} {v:.2f} s" for k, v in ours["stage_seconds"].items())
        rows.append(f"Time per stage (ours, whole folder): {split}.")
    return rows


def engine_table(results: dict[str, Any]) -> list[str]:
    engines = results.get("engines") or {}
    rows = [("| engine | workers | images | s from process start (median) | img/s | vs local | every run, s "
             "| of which imports before the run, s | run_to_folder s | run_to_folder vs local |"),
            "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    local = (engines.get("local") or {}).get("images_per_s")
    local_run = (engines.get("local") or {}).get("run_s")
    for key in sorted((k for k in engines if k == "local" or k.startswith("ray_") and k != "ray_init_s"),
                      key=lambda k: (k != "local", k)):
        r = engines[key]
        rows.append("| " + " | ".join([
            "local" if key == "local" else "ray", _num(r.get("workers")), _num(r.get("images")),
            _num(r.get("seconds")), _num(r.get("images_per_s")), _ratio(r.get("images_per_s"), local),
            ", ".join(_num(s) for s in r.get("runs_s", [])), _num(r.get("imports_s")), _num(r.get("run_s")),
            _ratio(local_run, r.get("run_s")),
        ]) + " |")
    walls = {key: r["wall"] for key, r in engines.items() if isinstance(r, dict) and r.get("wall")}
    if walls:
        rows += ["", ("Where the median runs' wall time went (`summary.json` `wall`; a Ray worker's start-up, load, "
                      "decode and stage seconds are its own: its decoding beside its model load or its previous batch is "
                      "not counted (`overlapped.decode`), so with one worker they add up to about the run's; with "
                      "several they are summed over the workers, so they may exceed it):"), ""]
        names = list(next(iter(walls.values())))
        rows += ["| engine | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        rows += ["| " + key + " | " + " | ".join(_num(wall.get(name)) for name in names) + " |"
                 for key, wall in walls.items()]
    if "ray_init_s" in engines:
        rows.append("")
        rows.append(f"Starting Ray itself took {engines['ray_init_s']:.1f} s (not in the seconds above; "
                    "actor start and model loading are).")
    rows += ["", ("Each run is a fresh interpreter, timed from its start (imports included: the local process "
                  "imports torch and the model code in its model load, a Ray worker in its own start-up) to the end "
                  "of `run_to_folder` (`benchmarks/bench_engines.py`); `run_to_folder s` leaves the driver's imports "
                  "out.")]
    return rows


def _subset_note(settings: dict[str, Any]) -> list[str]:
    from bench_models import DEFAULT_IMAGES, DEFAULT_REPEATS, DEFAULT_STAGES

    if settings["quick"]:
        return []
    # the full run is the default stages; the plugin stages (sam2, owlv2, tiled) are measured on request
    left_out = [s for s in DEFAULT_STAGES if s not in settings.get("stages", DEFAULT_STAGES)]
    parts = [p for p in ("stages", "recipe", "engines") if p not in settings.get("parts", ())]
    if (settings["images"], settings["repeats"]) == (DEFAULT_IMAGES, DEFAULT_REPEATS) and not left_out and not parts:
        return []
    missing = "; left out: " + ", ".join(left_out + parts) if left_out or parts else ""
    return ["", (f"This is a subset of the full run (`python benchmarks/run.py`: {DEFAULT_IMAGES} images, "
                f"{DEFAULT_REPEATS} repeats, every default stage, the recipe and the engines){missing}.")]


#: where a results file's hand-written part begins (notes added after a run); re-rendering keeps it
NOTES_HEADING = "\n## Notes on this run"


def main(argv: list[str] | None = None) -> None:
    """Re-render `X.md` from an existing `X.json` (after changing this module). The hand-written notes of
    an existing `X.md` (from its `## Notes on this run` heading on) are kept; the rendered part above them
    is replaced, in one atomic write (`recognize.atomic`, as `run.py` writes it), so a failed write loses
    neither. A file that is missing, unreadable or not a results file is one line on stderr and exit code
    2, nothing written for it; the other files are still rendered."""
    import argparse
    import json
    import sys
    from pathlib import Path

    from recognize.atomic import write_text

    parser = argparse.ArgumentParser(
        description="Re-render each results JSON written by benchmarks/run.py (X.json, or a stopped run's "
                    "X.partial.json) as Markdown beside it (X.md, X.partial.md). An existing X.md's hand-written "
                    f"notes (from its '{NOTES_HEADING.strip()}' heading on) are kept.")
    parser.add_argument("results", nargs="+", type=Path, metavar="X.json")
    failed = False
    for path in parser.parse_args(argv).results:
        target = path.with_suffix(".md")
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(results, dict) or not isinstance(results.get("settings"), dict):
                raise ValueError("no run settings in it")
            old = target.read_text(encoding="utf-8") if target.exists() else ""
        except (OSError, ValueError) as exc:
            print(f"error: {path}: not a results file of benchmarks/run.py ({exc})", file=sys.stderr)
            failed = True
            continue
        text = render(results)  # a bug here is a traceback: the module's, not the file's
        notes = old.find(NOTES_HEADING)
        if notes >= 0:
            text = text.rstrip("\n") + "\n" + old[notes:]
        try:
            write_text(target, text)
        except OSError as exc:
            print(f"error: {target}: cannot write it ({exc})", file=sys.stderr)
            failed = True
    if failed:
        raise SystemExit(2)


def _stage_rates_note(results: dict[str, Any]) -> list[str]:
    """Which GEMM rates the stage table's "% of" columns divide by, stage by stage (a GPU run has one)."""
    gpu = on_gpu(results)
    parts = []
    for name, entry in results.get("stages", {}).items():
        probes = (entry.get("ours") or {}).get("matmul_probes")
        if probes:
            peak, onednn = stage_rates(results, entry["ours"])
            parts.append(f"{name} {_num(peak, 1)}" + ("" if gpu else f" / {_num(onednn, 1)}"))
    if not parts:
        return []
    columns = ("\"% of matmul\" divides by the fp32 rate probed on the GPU" if gpu
               else "\"% of matmul\" and \"% of oneDNN matmul\" divide by the fp32 rates probed")
    return [(f"{columns} in the stage's own process just before and just after its timed passes (the higher of "
             f"the two; {'' if gpu else '`a @ b` / oneDNN '}GFLOP/s): " + "; ".join(parts) + "."), ""]


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    out = [
        "# recognize benchmarks",
        "",
        (f"Run {results['date']} with `{results['command']}`"
         + (f" at {results['revision']}" if results.get("revision") else "") + " "
         f"({'quick: tiny models' if s['quick'] else 'official model sizes, random weights'}; "
         f"{s['images']} image(s), {s['repeats']} repeat(s)). How to run and what each column means: "
         "`benchmarks/README.md`."),
        *_subset_note(s),
        *([f"FLOPs: {results['flops_recount']['note']} (first photo: {results['flops_recount']['photo']})."]
          if results.get("flops_recount") else []),
        "",
        *machine_lines(results),
        "",
    ]
    if results.get("stages"):
        out += ["## Stages", "",
                (f"Inputs: the reference images; Grounding DINO gets the tags {', '.join(s['tags'])}; SAM gets "
                f"{s['boxes']} boxes per image. Baseline: the model built and loaded for every image, one image at a "
                "time (the demo's way). speedup = baseline s/img ÷ ours s/img at batch 1 / 4; compute ratio = baseline "
                "inference alone ÷ ours at batch 1 (median of per-image ratios)."), "", *stage_table(results), "",
                *_stage_rates_note(results)]
    if (results.get("recipe") or {}).get("reference"):
        out += ["## tag -> ground -> segment on a folder", "",
                (f"ram_plus -> grounding_dino -> sam over a folder of {s['images']} photo(s). Ours: `recognize run` "
                 "with the structure of `recipes/tag_ground_segment.yaml` (batch 2, JSON + `annotated_image`), one "
                 "process for the folder, models loaded once. Reference: Grounded-SAM's `automatic_label_ram_demo.py` "
                 "steps (`benchmarks/reference_demo.py`: official Grounding DINO code, `segment_anything`'s "
                 "`SamPredictor`, RAM++ through our parity-proven classes, the matplotlib figure at dpi 300 + "
                 "`label.json`), a fresh process per photo. Same checkpoint files and photos; the tags are fixed "
                 f"({len(s['tags'])} per photo) and the boxes capped at {s['boxes']} per photo on both sides, so both "
                 "do the same work whatever the random weights score."), "", *recipe_table(results), ""]
    elif results.get("recipe"):
        out += ["## tag -> ground -> segment on a folder", "",
                (f"ram_plus -> grounding_dino -> sam over a folder of {s['images']} image(s); the tags are fixed "
                f"({len(s['tags'])} per image) and regions capped at {s['boxes']} per image in both runs, so both do "
                "the same work whatever the random weights score. Ours hands each stage 4 frames at a time (each "
                "stage's own `batch_size` caps its forward passes: taggers 8, Grounding DINO and SAM 1); the "
                "baseline works one image at a time."), "", *legacy_recipe_table(results), ""]
    if results.get("engines"):
        out += ["## Engines (ram_plus tagging recipe)", "", *engine_table(results), ""]
    if results.get("errors"):
        out += ["## Errors", "", *[f"- {e}" for e in results["errors"]], ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
