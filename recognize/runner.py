"""`recognize run`: a Pipeline over files, writing every output atomically and resumably.

Per image the output stages write their files, then `OUT/<name>.json` last: a JSON file on
disk means that image is complete, so a re-run (after a crash or `kill`) skips it and reads
its Frame back for dataset-level outputs. `OUT/summary.json` is written at the end.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from recognize.atomic import write_text
from recognize.engines.base import Engine, FrameResult, describe_error
from recognize.engines.local import LocalEngine
from recognize.engines.segment_store import PARTIAL_DIR
from recognize.engines.segment_store import clear as clear_partial
from recognize.engines.timing import FINISH, STARTUP, WRITE, StageTimer
from recognize.errors import InputError, RecognizeError
from recognize.frame import Frame
from recognize.images import expand_inputs
from recognize.outputs.json_output import JsonOutput, read_frame
from recognize.pipeline import Pipeline
from recognize.stage import OutputStage

SUMMARY_FILE = "summary.json"
MANIFEST_FILE = "manifest.json"


@dataclass
class RunSummary:
    recipe: str | None
    output_dir: str
    inputs: int = 0
    processed: int = 0
    skipped: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    #: where the wall time went: startup, load, decode, stages, write, finish, retried, other
    wall: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    started: str = ""
    finished: str = ""
    engine: str = "local"

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict[str, Any]:
        from recognize import __version__

        return {
            "recognize_version": __version__,
            "recipe": self.recipe,
            "engine": self.engine,
            "output_dir": self.output_dir,
            "counts": {
                "inputs": self.inputs,
                "processed": self.processed,
                "skipped": self.skipped,
                "failed": self.failed,
            },
            "failures": self.failures,
            "timings": self.timings,
            "wall": self.wall,
            "seconds": round(self.seconds, 3),
            "started": self.started,
            "finished": self.finished,
        }


def read_done_frame(frame: Frame, outputs: Sequence[OutputStage], json_stage: OutputStage, out_dir: Path) -> Frame | None:
    """The Frame a previous run finished (every output file present, its JSON readable), else None."""
    if not all(path.is_file() for stage in outputs for path in stage.files(frame, out_dir)):
        return None
    try:
        done = read_frame(json_stage.files(frame, out_dir)[0])
    except RecognizeError:  # a damaged file just means "redo this image"
        return None
    done.name = frame.name
    return done


def run_to_folder(
    pipeline: Pipeline,
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quiet: bool = False,
    engine: Engine | None = None,
    startup_seconds: float | None = None,
) -> RunSummary:
    """Process `inputs` into `out_dir`; returns (and writes) the run summary.

    `startup_seconds`: time spent before this call (the CLI passes the process's age), shown in
    the summary's `wall` so it accounts for the whole run."""
    from tqdm.auto import tqdm

    engine = engine or LocalEngine(progress=not quiet)
    timer = StageTimer()
    if startup_seconds:
        timer.phases[STARTUP] += startup_seconds
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / PARTIAL_DIR
    check_manifest(pipeline, out, overwrite)
    if overwrite:
        clear_partial(partial)
    started = time.perf_counter()
    summary = RunSummary(
        recipe=pipeline.name,
        output_dir=str(out),
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        engine=getattr(engine, "name", type(engine).__name__),
    )
    json_stage = next((s for s in pipeline.outputs if s.name == "json"), None) or JsonOutput()
    # json goes last: its file is the "this image is complete" marker
    outputs = [s for s in pipeline.outputs if s.name != "json"] + [json_stage]

    items = expand_inputs(inputs)
    summary.inputs = len(items)
    all_frames: list[Frame] = []
    todo: list[Frame] = []
    for path, name in items:
        frame = Frame(source=str(path), name=name)
        done = None if overwrite else read_done_frame(frame, outputs, json_stage, out)
        if done is not None:
            all_frames.append(done)
            summary.skipped += 1
        else:
            todo.append(frame)

    if todo:
        engine.load(pipeline, timer)  # missing weights fail now, in one line, before any image is touched

    bar = tqdm(
        total=len(todo), unit="img", disable=quiet or not todo, file=sys.stderr, dynamic_ncols=True,
        desc=pipeline.name or "run",
    )

    def on_result(result: FrameResult) -> None:
        if result.ok:
            try:
                with timer.phase(WRITE):
                    for stage in outputs:
                        stage.write(result.frame, out)
            except Exception as exc:  # noqa: BLE001 - a write error fails this image, not the run
                result.error = f"writing outputs: {describe_error(exc)}"
        if result.ok:
            summary.processed += 1
            all_frames.append(result.frame)
            result.frame.release_image()
        else:
            summary.failures.append({"source": result.frame.source, "name": result.frame.name or "",
                                     "error": result.error or ""})
            bar.write(f"skipped {result.frame.source}: {result.error}", file=sys.stderr)
        bar.update(1)

    try:
        for _ in engine.run(pipeline, todo, on_result=on_result, checkpoint_dir=partial, timer=timer):
            pass
    finally:
        bar.close()
    clear_partial(partial)  # every frame is final now

    order = {name: i for i, (_, name) in enumerate(items)}
    all_frames.sort(key=lambda f: order.get(f.name or "", len(order)))
    with timer.phase(FINISH):
        for stage in outputs:
            stage.finish(all_frames, out)

    summary.seconds = time.perf_counter() - started + (startup_seconds or 0.0)
    summary.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary.timings = {
        name: {"seconds": round(seconds, 4), "per_image": round(seconds / max(summary.processed, 1), 4)}
        for name, seconds in timer.stages.items()
    }
    summary.wall = timer.wall(summary.seconds)
    write_text(out / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    return summary


def check_manifest(pipeline: Pipeline, out: Path, overwrite: bool) -> None:
    """OUT/manifest.json records the recipe; resuming into OUT with another recipe is refused."""
    from recognize import __version__

    path = out / MANIFEST_FILE
    described = pipeline.describe()
    recipe = {"stages": described["stages"], "outputs": described["outputs"]}  # not batch size or device
    if path.is_file() and not overwrite:
        try:
            previous = json.loads(path.read_text(encoding="utf-8")).get("pipeline")
        except (OSError, ValueError):
            previous = None
        if previous is not None and previous != json.loads(json.dumps(recipe)):
            raise InputError(
                f"{out} holds results of a different recipe or settings (see {path}); "
                "use --overwrite to redo them, or another -o folder"
            )
    write_text(path, json.dumps({"recognize_version": __version__, "recipe": pipeline.name, "pipeline": recipe},
                                indent=2, ensure_ascii=False))
