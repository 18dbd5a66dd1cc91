"""The tag -> box -> mask chain's cold start and peak memory, two source trees side by side.

    python benchmarks/bench_chain_start.py --before /path/to/old/checkout --after . --runs 3
    python benchmarks/bench_chain_start.py --before OLD --after . --mode full --runs 2 --images 1
    python benchmarks/bench_chain_start.py --after . --mode full --runs 1    # one tree alone

`recipes/tag_ground_segment.yaml` at its default settings (RAM++ Swin-L -> Grounding DINO swint_ogc ->
SAM vit_h, batch size 2, SAM batch 1), pointed at the benchmark's random checkpoints at the official
sizes, in the official formats (`bench_models.Kit`: RAM++ and SAM as released, Grounding DINO in the
IDEA-Research layout), with the fixed work of the other benchmarks (8 tags, `--boxes` boxes per photo),
run as a user runs it: `recognize run RECIPE PHOTO -o OUT` in a fresh process, the two trees
alternating so a machine that gets busier slows both alike.

- `--mode start`: cold start = from starting the command to the first stage starting on the first
  photo (the process is ended there). Reported: that time, the CPU seconds the process had used by
  then (user + system, all threads: what a busy shared machine does not inflate), and the process's
  peak RSS at that moment.
- `--mode full`: the whole run on `--images` photos: peak RSS of the process (`wait4`'s `ru_maxrss`, its
  VmHWM), `summary.json`'s `wall`, and the peak as it stood when each stage and phase started and ended
  (the step where it jumps is where the peak comes from), with RssAnon / RssFile after each step and
  their maxima in between (a thread in the measured process samples /proc/self/status every 50 ms),
  and the CPU seconds of the whole process (`cpu_s`, user + system of all threads, from `wait4`).

Memory-mapped weights are file pages: they count in RSS while resident, but under memory pressure
the kernel drops them (and reads them again when touched), which lowers VmHWM; the log's `rssanon` /
`rssfile` show it. Measure peaks on a machine with memory to spare.

The hook (`_HOOK`) wraps `recognize.engines.timing.StageTimer.stage`/`phase` in the measured process
and appends one JSON line per event to a log; it changes nothing else. A script, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_machine import machine, machine_line

_HOOK = r"""
import contextlib, json, os, sys, time
_log = open(os.environ["BENCH_CHAIN_LOG"], "a")
_stop = os.environ.get("BENCH_CHAIN_STOP") == "1"

def _mem():
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                found[line.split(":")[0].lower()] = int(line.split()[1]) // 1024
    return found

_since = {"rssanon": 0, "rssfile": 0}  # the sampler's maxima since the previous event

def _sample():
    while True:
        now = _mem()
        for key in _since:
            _since[key] = max(_since[key], now.get(key, 0))
        time.sleep(0.05)

import threading
threading.Thread(target=_sample, daemon=True).start()

def _event(kind, what, name):
    now = _mem()
    peaks = {f"{key}_max": max(value, now.get(key, 0)) for key, value in _since.items()}
    for key in _since:
        _since[key] = 0
    _log.write(json.dumps({"event": kind, "what": what, "name": name, "t": time.time(),
                           "cpu": time.process_time(), **now, **peaks}) + "\n")
    _log.flush()

from recognize.engines import timing
_stage, _phase = timing.StageTimer.stage, timing.StageTimer.phase

@contextlib.contextmanager
def stage(self, name):
    _event("enter", "stage", name)
    if _stop:
        os._exit(0)
    try:
        with _stage(self, name):
            yield
    finally:
        _event("exit", "stage", name)

@contextlib.contextmanager
def phase(self, name):
    _event("enter", "phase", name)
    try:
        with _phase(self, name):
            yield
    finally:
        _event("exit", "phase", name)

timing.StageTimer.stage, timing.StageTimer.phase = stage, phase
sys.argv = ["recognize", *sys.argv[1:]]
from recognize.cli import main
main()
"""


def chain_recipe(folder: Path, boxes: int) -> Path:
    """The chain recipe, unchanged but for the stages' file paths (the benchmark's random checkpoints)
    and, since random weights find nothing at real thresholds, the benchmark's fixed work: RAM++ reports
    the 8 fixed `TAGS` (threshold 0), Grounding DINO keeps every box up to `boxes` per photo (`max_regions`)."""
    from bench_models import TAGS, Kit, default_cache

    kit = Kit(quick=False, cache=default_cache())
    recipe = yaml.safe_load((HERE.parent / "recipes" / "tag_ground_segment.yaml").read_text())
    gd = kit.gd_params()
    official_gd = json.loads(kit.official_gdino_spec().read_text())["checkpoint"]
    files = {
        "ram_plus": {**kit.tagger_params("ram_plus"), "include": list(TAGS), "threshold": 0.0},
        "grounding_dino": {"checkpoint": official_gd, "vocab": gd["vocab"], "box_threshold": 0.0,
                           "text_threshold": 0.0, "max_regions": boxes},
        "sam": {"checkpoint": kit.sam_params()["checkpoint"]},
    }
    for stage in recipe["stages"]:
        stage["with"] = {**(stage.get("with") or {}), **files[stage["use"]]}
    path = folder / "chain.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def env_for(tree: Path, log: Path, stop: bool) -> dict[str, str]:
    paths = [tree, tree / "plugins" / "recognize-grounding-dino", tree / "plugins" / "recognize-sam"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)), BENCH_CHAIN_LOG=str(log),
               BENCH_CHAIN_STOP="1" if stop else "0")
    env["RECOGNIZE_LOAD_PLUGINS"] = "recognize-grounding-dino,recognize-sam"
    env.pop("RECOGNIZE_PLUGINS", None)
    return env


def run_once(tree: Path, recipe: Path, images: list[Path], work: Path, stop: bool) -> dict:
    """One fresh `recognize run`; returns the cold start (s), the peak RSS and the logged events."""
    log = Path(tempfile.mkstemp(dir=work, suffix=".jsonl")[1])
    out = Path(tempfile.mkdtemp(dir=work))
    command = [sys.executable, "-c", _HOOK, "run", str(recipe), *map(str, images), "-o", str(out), "-q"]
    start = time.time()
    proc = subprocess.Popen(command, env=env_for(tree, log, stop), cwd=tree, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    ended = time.time()
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    first = next((e for e in events if e["what"] == "stage" and e["event"] == "enter"), None)
    if first is None:
        raise RuntimeError(f"{tree}: no stage started (exit {proc.returncode}): {stderr[-2000:]}")
    result = {"cold_start_s": first["t"] - start, "cold_start_cpu_s": first["cpu"], "peak_rss_mib": usage.ru_maxrss / 1024,
              "cpu_s": usage.ru_utime + usage.ru_stime,
              "peak_at_first_stage_mib": first["vmhwm"], "seconds": ended - start,
              "events": [{**e, "t": round(e["t"] - start, 3)} for e in events]}
    summary = out / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        result["wall"], result["overlapped"] = data.get("wall"), data.get("overlapped")
    return result


def peak_steps(events: list[dict]) -> list[str]:
    """Where the peak rose: each stage/phase end at which VmHWM had grown since its start."""
    opened: dict[tuple[str, str], dict] = {}
    steps = []
    for event in events:
        key = (event["what"], event["name"])
        if event["event"] == "enter":
            opened[key] = event
        elif key in opened:
            before = opened.pop(key)
            if event["vmhwm"] > before["vmhwm"]:
                sampled = (f"; sampled max anon {event['rssanon_max']}, file {event['rssfile_max']}"
                           if "rssanon_max" in event else "")
                steps.append(f"{event['what']} {event['name']}: peak {before['vmhwm']} -> {event['vmhwm']} MiB "
                             f"(after: RSS {event['vmrss']}, anon {event['rssanon']}, file {event['rssfile']} MiB"
                             f"{sampled})")
    return steps


def main() -> None:
    from bench_models import IMAGES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="the older tree; omitted: measure --after alone")
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--mode", choices=["start", "full"], default="start")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", type=int, default=1, help="photos per run (the largest first)")
    parser.add_argument("--boxes", type=int, default=20, help="boxes per photo reaching SAM")
    parser.add_argument("--json", type=Path, help="also write every run's raw numbers here")
    args = parser.parse_args()
    trees = {"before": args.before.resolve()} if args.before else {}
    trees["after"] = args.after.resolve()
    photos = sorted(IMAGES, key=lambda p: -p.stat().st_size)[: args.images]
    with tempfile.TemporaryDirectory(prefix="bench_chain_") as tmp:
        work = Path(tmp)
        recipe = chain_recipe(work, args.boxes)
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                runs[name].append(run_once(tree, recipe, photos, work, stop=args.mode == "start"))
    print(f"Machine: {machine_line()} (the runs: torch's default threads); mode {args.mode}; "
          f"{args.runs} runs each, alternating; photos: {', '.join(p.name for p in photos)}\n")
    keys = ["cold_start_s", "cold_start_cpu_s", "peak_at_first_stage_mib"]
    if args.mode == "full":
        keys = ["cold_start_s", "cold_start_cpu_s", "peak_rss_mib", "seconds", "cpu_s"]
    print("| | " + " | ".join(keys) + " |\n|---|" + "---:|" * len(keys))
    for name in trees:
        print(f"| {name} | " + " | ".join(f"{statistics.median(r[k] for r in runs[name]):.2f}" for k in keys) + " |")
    if args.mode == "full":
        for name in trees:
            print(f"\n{name}: where the peak rose (first run)")
            for step in peak_steps(runs[name][0]["events"]):
                print(f"  {step}")
            print(f"  wall: {runs[name][0].get('wall')}; overlapped: {runs[name][0].get('overlapped')}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "mode": args.mode, "photos": [str(p) for p in photos],
                                         "trees": {k: str(v) for k, v in trees.items()}, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
