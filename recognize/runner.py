"""`recognize run`: a Pipeline over files, writing every output atomically and resumably.

Layout (see `recognize.outputs.paths`): per-image results under `OUT/frames/`, dataset files
(`coco.json`, ...) and the run's own files (`manifest.json`, `summary.json`) at the top, so no
input name can make two producers share a path.

Resume is by identity, not by name: when an image's outputs are written, the runner appends a
line to `OUT/.recognize/done.jsonl` with the source's path, size, mtime and sha256, the recipe's
fingerprint and the size of every file written. A re-run skips an image only when that record
matches: same recipe, same source (unchanged path, size and mtime, or the same content), files
intact. Anything else is processed again, so a changed photo is redone and another folder's
`x.png` is never reported as done.

Memory is bounded by the batch: processed frames are written and dropped; dataset-level outputs
read the frames back from `OUT/frames/` one at a time when the run ends (`FrameFiles`). Nor does
the driver's memory grow with the number of inputs: what it must know about all of them (the
inputs, their names and claimed files, which are to do, the finished ones) is a scratch table on
disk (`recognize.run_inputs`), and the journal is looked up through an index (`recognize.run_journal`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, overload

from recognize.atomic import remove_stale_temps, write_text
from recognize.engines.background_write import BackgroundWriter, background_for
from recognize.engines.base import Engine, FrameResult, describe_error, is_load_failure
from recognize.engines.local import LocalEngine
from recognize.engines.segment_store import PARTIAL_DIR
from recognize.engines.segment_store import clear as clear_partial
from recognize.engines.timing import FINISH, PREPARE, STARTUP, StageTimer
from recognize.errors import InputError, RecipeError, RecognizeError
from recognize.frame import Frame
from recognize.hub import sha256_file
from recognize.outputs.json_output import JsonOutput, read_frame
from recognize.outputs.paths import RUN_FILES
from recognize.outputs.shards import ShardsOutput, remove_shards, shard_extent
from recognize.pipeline import Pipeline
from recognize.run_inputs import RunInputs
from recognize.run_journal import DONE_FILE, STATE_DIR, DoneJournal  # noqa: F401 - DONE_FILE re-exported (remote_output)
from recognize.sources import same_url, url_identity
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
    #: where the wall time went: startup, prepare, load, load_wait, decode, stages, release, write,
    #: finish, retried, other (they add up to `seconds`)
    wall: dict[str, float] = field(default_factory=dict)
    #: work that ran on another thread beside the wall-time parts (models loaded in the background
    #: while the first stage computed): {"load": seconds}; not part of `wall`'s sum
    overlapped: dict[str, float] = field(default_factory=dict)
    #: seconds from process start (the CLI; from the call in a library run) until the first stage
    #: began on the first batch: what a user waits before any model runs (local engine; else None)
    cold_start: float | None = None
    seconds: float = 0.0
    started: str = ""
    finished: str = ""
    engine: str = "local"
    fast_modes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def to_dict(self) -> dict[str, Any]:
        from recognize import __version__

        return {
            "recognize_version": __version__,
            "recipe": self.recipe,
            "engine": self.engine,
            "fast_modes": self.fast_modes,
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
            "overlapped": self.overlapped,
            "cold_start": None if self.cold_start is None else round(self.cold_start, 3),
            "seconds": round(self.seconds, 3),
            "started": self.started,
            "finished": self.finished,
        }


# -- identity of a source and of a finished result ------------------------------------------------
def source_identity(path: Path | str) -> dict[str, Any]:
    """What a finished result records about its source (path, size, mtime, content hash; for a URL
    its size and ETag or mtime, see `recognize.sources.url_identity`)."""
    if isinstance(path, str):
        return url_identity(path)
    info = path.stat()
    return {"source": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns,
            "sha256": sha256_file(path)}


def same_source(record: dict[str, Any], path: Path | str) -> bool:
    """Whether `path` is the source `record` was made from: unchanged (path, size, mtime), or moved
    or touched but with the same content (size and sha256); a URL: same URL, size and ETag."""
    if isinstance(path, str):
        return same_url(record, path)
    try:
        info = path.stat()
        if info.st_size != record.get("size"):
            return False
        if str(path.resolve()) == record.get("source") and info.st_mtime_ns == record.get("mtime_ns"):
            return True
        return sha256_file(path) == record.get("sha256")
    except OSError:
        return False


def recipe_of(pipeline: Pipeline) -> dict[str, Any]:
    """What decides the results (not batch size or device)."""
    described = pipeline.describe()
    return json.loads(json.dumps({"stages": described["stages"], "outputs": described["outputs"]}))


def fingerprint(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


class FrameFiles(Sequence[Frame]):
    """The run's finished frames, read back from `OUT/frames/` one at a time (in input order).

    What `OutputStage.finish` gets: iterating it (as often as needed) never holds more than one
    frame in memory."""

    def __init__(self, entries: Sequence[tuple[Path | str, str, str]]) -> None:
        self._entries = entries  # (frame json, source path, name): a list, or a table on disk

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, index: int) -> Frame: ...

    @overload
    def __getitem__(self, index: slice) -> FrameFiles: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return FrameFiles(self._entries[index])
        return self._read(*self._entries[index])

    def __iter__(self) -> Iterator[Frame]:
        for entry in self._entries:
            yield self._read(*entry)

    @staticmethod
    def _read(json_path: Path | str, source: str, name: str) -> Frame:
        frame = read_frame(json_path)
        frame.source, frame.name = source, name  # the source may have moved since it was processed
        return frame


# -- the output folder ----------------------------------------------------------------------------
def _folder_error(out: Path, exc: OSError, doing: str) -> RecognizeError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return RecognizeError(f"{out}: cannot {doing}: {reason} (free some space, or choose another -o)")
    return InputError(f"{out}: cannot {doing}: {reason} (choose another -o folder)")


def prepare_output_folder(out: Path) -> list[Path]:
    """Create OUT and prove it is a writable folder, before any model is loaded. Returns the
    folders it created (OUT and its missing parents, deepest first), for `remove_if_empty`."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: -o must be a folder, and this is a file (choose another -o)")
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    state = out / STATE_DIR
    state_created = not state.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _folder_error(out, exc, "create the output folder") from None
    try:
        write_text(state / "write-test", "ok\n")
        (state / "write-test").unlink()
        if state_created:
            state.rmdir()  # the probe leaves nothing behind
    except OSError as exc:
        raise _folder_error(out, exc, "write into the output folder") from None
    return created


def _undo_start(out: Path, created: Sequence[Path], manifest_written: bool) -> None:
    """Remove what a run wrote before its first image (its manifest, the folders it created)."""
    if manifest_written:
        (out / MANIFEST_FILE).unlink(missing_ok=True)
    remove_if_empty([out / STATE_DIR])
    remove_if_empty(created)


def remove_if_empty(folders: Sequence[Path]) -> None:
    """Remove the folders a run created when it failed before writing anything into them."""
    for folder in folders:
        try:
            folder.rmdir()  # only succeeds on an empty folder
        except OSError:
            return


def check_output_layout(outputs: Sequence[OutputStage]) -> None:
    """Every dataset-level name in OUT has one producer: no output may write a run file or a name
    another output writes. A recipe error (exit 2) naming the outputs."""
    owners: dict[str, str] = {name: "the run itself" for name in RUN_FILES}
    for index, stage in enumerate(outputs):
        for name in stage.run_files():
            where = f"outputs[{index}] ({stage.name})"
            if name in owners:
                raise RecipeError(f"{where}: writes {name!r}, which {owners[name]} also writes; "
                                  "give one of them another `filename`, or drop the duplicate output")
            owners[name] = where


def check_claims(frames: Iterable[Frame], outputs: Sequence[OutputStage], out: Path, *,
                 owner: MutableMapping[str, str] | None = None, folders: MutableMapping[str, str] | None = None) -> None:
    """Refuse, before anything is written, a run in which two images (or two outputs) would write
    the same per-image file, or one would write a file where another needs a folder.

    `owner` (file -> the source that writes it) and `folders` (folder -> a source writing in it)
    start empty; the runner passes mappings on disk (`RunInputs.claim_map`) so that 14 million
    images' paths are not held in memory."""
    owner = {} if owner is None else owner
    folders = {} if folders is None else folders
    for frame in frames:
        for stage in outputs:
            for path in stage.claims(frame, out):
                key = path.as_posix()
                if key in owner or key in folders:
                    other = owner.get(key) or folders[key]
                    raise InputError(f"{frame.source} and {other} would both write {path}; "
                                     "rename one of them or run them into different -o folders")
                owner[key] = frame.source
                for parent in path.parents:
                    parent_key = parent.as_posix()
                    if parent_key in owner:
                        raise InputError(f"{frame.source} and {owner[parent_key]} would both write {parent}; "
                                         "rename one of them or run them into different -o folders")
                    if parent == out or parent_key in folders:
                        break
                    folders[parent_key] = frame.source


def _has_results(out: Path, journal: DoneJournal) -> bool:
    """Whether OUT holds results: a finished image, or any file that is not the run's bookkeeping
    (a run whose images all failed, or that stopped before the first one, leaves none)."""
    if journal.has_records():
        return True
    try:
        entries = set(os.listdir(out))
    except OSError:
        return False
    return bool(entries - {MANIFEST_FILE, SUMMARY_FILE, STATE_DIR, PARTIAL_DIR})


def read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pipeline"), dict) else None


def check_manifest(recipe: dict[str, Any], out: Path, journal: DoneJournal, overwrite: bool) -> bool:
    """May this run write into OUT? Returns whether the manifest must be (re)written.

    A folder with results of another recipe, or with files but no readable manifest (not made by
    `recognize run`, or damaged), is refused unless `--overwrite`; an OUT holding nothing but the
    manifest of a run that failed before any image is free to use."""
    manifest = read_manifest(out)
    if overwrite or not _has_results(out, journal):
        return manifest is None or manifest["pipeline"] != recipe
    if manifest is None:
        raise InputError(
            f"{out} is not empty and has no readable {MANIFEST_FILE}, so its files may come from another recipe; "
            "use --overwrite to write into it anyway, or another -o folder"
        )
    if manifest["pipeline"] != recipe:
        raise InputError(
            f"{out} holds results of a different recipe or settings (see {out / MANIFEST_FILE}); "
            "use --overwrite to redo them, or another -o folder"
        )
    return False


def write_manifest(pipeline: Pipeline, recipe: dict[str, Any], out: Path) -> None:
    from recognize import __version__

    write_text(out / MANIFEST_FILE, json.dumps({"recognize_version": __version__, "recipe": pipeline.name,
                                                "fingerprint": fingerprint(recipe), "pipeline": recipe},
                                               indent=2, ensure_ascii=False))


# -- the run --------------------------------------------------------------------------------------
def _is_done(record: dict[str, Any] | None, path: Path | str, out: Path, recipe_id: str,
             sizes: dict[str, int] | None = None) -> bool:
    """Whether `record` is a finished image of this recipe whose files are intact: each per-image
    file has its recorded size, each append-only file (a shard) still reaches the end of the
    image's record (`recognize.outputs.shards.shard_extent`). `sizes` caches the shards' extents
    (many images share one shard)."""
    if record is None or record.get("recipe") != recipe_id or record.get("error"):
        return False
    files = record.get("files")
    appended = record.get("appended") or {}
    if not isinstance(files, dict) or not isinstance(appended, dict) or not (files or appended):
        return False
    for relative, size in files.items():
        try:
            if (out / relative).stat().st_size != size:
                return False
        except OSError:
            return False
    for relative, span in appended.items():
        size = None if sizes is None else sizes.get(relative)
        if size is None:
            size = shard_extent(out / relative)  # bytes of a JSONL shard, rows of a Parquet one
            if sizes is not None:
                sizes[relative] = size
        if not isinstance(span, list) or len(span) != 2 or size < span[1]:
            return False
    return same_source(record, path)


def _span(record: dict[str, Any]) -> tuple[str, int, int]:
    shard, (start, end) = next(iter(record["appended"].items()))
    return shard, start, end


class ShardFrames(Sequence[Frame]):
    """The run's finished frames read back from the shards (`recognize.outputs.shards`), in input
    order, by the byte spans the done journal recorded: what `finish` gets when the run writes
    no per-image JSON files."""

    def __init__(self, out: Path, entries: Sequence[tuple[str, int, int, str, str]]) -> None:
        self._out, self._entries = out, entries  # (shard, start, end, source, name)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return ShardFrames(self._out, self._entries[index])
        return next(iter(ShardFrames(self._out, [self._entries[index]])))

    def __iter__(self) -> Iterator[Frame]:
        from recognize.outputs.shards import read_span

        handles: dict[str, Any] = {}
        try:
            for shard, start, end, source, name in self._entries:
                frame = read_span(self._out, shard, start, end, handles)
                frame.source, frame.name = source, name
                yield frame
        finally:
            for handle in handles.values():
                handle.close()


def run_to_folder(
    pipeline: Pipeline,
    inputs: Iterable[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    quiet: bool = False,
    engine: Engine | None = None,
    startup_seconds: float | None = None,
    on_journal: Callable[[], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    on_finish: Callable[[], None] | None = None,
    began: tuple[float, str] | None = None,
) -> RunSummary:
    """Process `inputs` into `out_dir`; returns (and writes) the run summary.

    `startup_seconds`: time spent before this call (the CLI passes the process's age), shown in
    the summary's `wall` so it accounts for the whole run.

    `began`: (`time.perf_counter()`, UTC ISO time) the run counts from, where the caller prepared it
    before calling (`-o URL` opens the URL and stages its journal first: `recognize.remote_output`);
    that time is then the start of `prepare`, `cold_start` and `started`. Default: this call.

    `on_journal`: called after each image's done-journal line is written (an `-o URL` run uploads
    what the new lines point at: `recognize.remote_output`); what it raises stops the run. Where the
    outputs are written beside the stages (`recognize.engines.background_write`) it is called on the
    writer thread, one call at a time, and what it raises stops the run at the next image handed over.

    `on_ready`: called once every refusal has passed (inputs, names, claims, OUT's recipe) and
    before models load (an `-o URL` run uploads its manifest then, so a refused run leaves nothing
    remote); what it raises stops the run.

    `on_finish`: called after the outputs' dataset-level files, timed with them under `finish`, before
    the summary is written (an `-o URL` run uploads what is left); what it raises stops the run.

    Everything that can be refused is refused before a file is written or a model loaded: bad
    output names, colliding results, inputs inside OUT, an OUT made by another recipe.
    """
    engine = engine or LocalEngine(progress=not quiet)
    timer = StageTimer()
    entered, entered_at = began or (timer.clock(), datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if startup_seconds:
        timer.phases[STARTUP] += startup_seconds
    out = Path(out_dir)
    shard_stage = next((s for s in pipeline.outputs if s.name == "shards"), None)
    json_stage = next((s for s in pipeline.outputs if s.name == "json"), None)
    if json_stage is None and shard_stage is None:
        json_stage = JsonOutput()
    # json (or shards) go last: their record is the frame the dataset outputs read back
    outputs = [s for s in pipeline.outputs if s.name not in ("json", "shards")]
    outputs += [s for s in (json_stage, shard_stage) if s is not None]
    check_output_layout(outputs)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: -o must be a folder, and this is a file (choose another -o)")
    items = RunInputs.expand(inputs, exclude=out)  # on disk: memory does not grow with the inputs
    journal = DoneJournal(out)  # looked up through its index on disk
    try:
        return _run(pipeline, items, journal, out, outputs, json_stage, shard_stage, engine=engine, timer=timer,
                    overwrite=overwrite, quiet=quiet, startup_seconds=startup_seconds, on_journal=on_journal,
                    on_ready=on_ready, on_finish=on_finish, entered=entered,
                    entered_at=entered_at)
    finally:
        journal.close()
        items.close()


def _run(pipeline: Pipeline, items: RunInputs, journal: DoneJournal, out: Path, outputs: list[OutputStage],
         json_stage: OutputStage | None, shard_stage: OutputStage | None, *, engine: Engine, timer: StageTimer,
         overwrite: bool, quiet: bool, startup_seconds: float | None,
         on_journal: Callable[[], None] | None, on_ready: Callable[[], None] | None,
         on_finish: Callable[[], None] | None, entered: float, entered_at: str) -> RunSummary:
    """`run_to_folder` once its inputs are listed (on disk); the caller closes `items` and `journal`.
    `entered` / `entered_at`: the timer's clock and the UTC time the run counts from (`began`, or the
    call of `run_to_folder`): the origin of its `seconds`, `started`, `prepare` and `cold_start`."""
    from tqdm.auto import tqdm

    check_claims(items.frames(), outputs, out, owner=items.claim_map("claimed_files", out),
                 folders=items.claim_map("claimed_folders", out))
    created = prepare_output_folder(out)

    recipe = recipe_of(pipeline)
    recipe_id = fingerprint(recipe)
    manifest_needed = check_manifest(recipe, out, journal, overwrite)
    # only now that OUT is known to be ours (or --overwrite): never walk (and delete in) a folder
    # that is refused, such as a mistyped `-o ~`
    journal.read()  # its index, brought up to date with the journal
    remove_stale_temps(out)  # what a killed run left half-written
    partial = out / PARTIAL_DIR
    if overwrite or manifest_needed:
        clear_partial(partial)  # intermediate results of other settings
    if overwrite and shard_stage is not None:  # the old shards would only grow the disk; their
        remove_shards(out / shard_stage.params.folder)  # journal records (spans in them) go too
        journal.reset()

    summary = RunSummary(
        recipe=pipeline.name,
        output_dir=str(out),
        inputs=len(items),
        started=entered_at,
        engine=getattr(engine, "name", type(engine).__name__),
        fast_modes=pipeline.fast_modes(),
    )
    if summary.fast_modes:  # never silent, even with --quiet: these outputs are not the exact path's
        from recognize.fast_modes import describe_fast_modes, slow_on_this_cpu

        print(f"recognize: {describe_fast_modes(summary.fast_modes)}", file=sys.stderr)
        if (slow := slow_on_this_cpu(pipeline.stages)) is not None:
            print(f"recognize: {slow}", file=sys.stderr)
    shard_sizes: dict[str, int] = {}
    todo_count = items.mark_todo(
        overwrite or not _is_done(journal.get(name), path, out, recipe_id, shard_sizes) for path, name in items)
    summary.skipped = len(items) - todo_count
    # listing the inputs and checking them against OUT (seconds for a million inputs): in the run's
    # seconds, as in `cold_start`
    timer.phases[PREPARE] += timer.clock() - entered
    if on_ready is not None:
        on_ready()

    if todo_count:
        try:
            engine.load(pipeline, timer)  # missing weights fail now, in one line, before any image is touched
        except BaseException:
            remove_if_empty(created)  # a run that could not start leaves no empty -o folder behind
            raise
    if manifest_needed:
        try:
            write_manifest(pipeline, recipe, out)
        except OSError as exc:
            raise _folder_error(out, exc, f"write {MANIFEST_FILE}") from None

    bar = tqdm(
        total=todo_count, unit="img", disable=quiet or not todo_count, file=sys.stderr, dynamic_ncols=True,
        desc=pipeline.name or "run",
    )

    def on_result(result: FrameResult) -> None:
        frame = result.frame
        if result.ok:
            try:
                for stage in outputs:
                    stage.write(frame, out)
                record = {"name": frame.name, **source_identity(items.source_of(frame.name or "")),
                          "recipe": recipe_id,
                          "files": {path.relative_to(out).as_posix(): path.stat().st_size
                                    for stage in outputs for path in stage.files(frame, out)}}
                if shard_stage is not None:
                    record["appended"] = shard_stage.appended(frame, out)
                journal.append(record)
            except Exception as exc:  # noqa: BLE001 - a write error fails this image, not the run
                result.error = f"writing outputs: {describe_error(exc)}"
        if not result.ok:  # recorded once, with its error; a re-run tries it again
            try:
                journal.append({"name": frame.name, "source": frame.source, "recipe": recipe_id,
                                "error": result.error})
            except OSError:
                pass
        if result.ok:
            summary.processed += 1
        else:
            summary.failures.append({"source": frame.source, "name": frame.name or "", "error": result.error or ""})
            error = result.error or ""  # an unreadable file's message already starts with its path
            bar.write(f"skipped {error if error.startswith(f'{frame.source}: ') else f'{frame.source}: {error}'}",
                      file=sys.stderr)
        frame.release_image()
        for region in frame.regions:  # a caller may still hold the frame; the masks are on disk now
            region.mask = None
        bar.update(1)
        if on_journal is not None:
            on_journal()

    todo = items.todo()
    frames = (Frame(source=str(path), name=name) for path, name in todo)
    # where a core is free for it (a GPU computes, or torch leaves one), each image's outputs are written
    # on a background thread while the next batch computes, in order (`recognize.engines.background_write`)
    writer = BackgroundWriter(on_result, timer, depth=pipeline.batch_size,
                              background=bool(todo_count) and background_for(pipeline.stages))
    try:
        try:
            for _ in engine.run(pipeline, frames, on_result=writer.submit, checkpoint_dir=partial, timer=timer):
                pass
        finally:
            stopping = sys.exc_info()[1]  # the error that stopped the run, if one did: it is the one to report
            try:
                writer.close(raise_error=stopping is None)  # what was computed before an error is still written
            finally:
                stopping = stopping or sys.exc_info()[1]  # the writer's error, if it raised one
                bar.close()
                frames.close()
                todo.close()  # its connection to the table, even when the engine stopped early
                if isinstance(shard_stage, ShardsOutput):
                    try:
                        shard_stage.close()  # a Parquet shard becomes readable (renamed into place) only when closed
                    except OSError as exc:
                        if stopping is None:
                            raise _folder_error(out, exc, "close the last shard") from None
                journal.close()
    except BaseException as exc:
        if is_load_failure(exc) and not summary.processed and not summary.failures:
            # a model that loaded in the background failed before any image was done: as when
            # `engine.load` fails, the run could not start, so it leaves nothing behind
            _undo_start(out, created, manifest_needed)
        raise
    if writer.background:  # the engine trimmed the heap before the writer let go of the last frames
        from recognize import heap

        heap.trim()
    clear_partial(partial)  # every frame is final now

    journal.read()
    finished = ((path, name, record) for path, name in items  # shards grew: fresh sizes
                if _is_done(record := journal.get(name), path, out, recipe_id, {}))
    frame_files: Sequence[Frame]
    if json_stage is not None:
        frame_files = FrameFiles(items.entries("finished", (
            (json_stage.files(Frame(source=str(path), name=name), out)[0], str(path), name)
            for path, name, _ in finished)))
    else:
        frame_files = ShardFrames(out, items.entries("finished", (
            (*_span(record), str(path), name) for path, name, record in finished)))
    try:
        with timer.phase(FINISH):
            for stage in outputs:
                stage.finish(frame_files, out)
    except OSError as exc:
        raise _folder_error(out, exc, "write the dataset outputs") from None
    if on_finish is not None:
        with timer.phase(FINISH):
            on_finish()
    try:
        summary.seconds = timer.clock() - entered + (startup_seconds or 0.0)
        summary.finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        summary.timings = {
            name: {"seconds": round(seconds, 4), "per_image": round(seconds / max(summary.processed, 1), 4)}
            for name, seconds in timer.stages.items()
        }
        summary.wall = timer.wall(summary.seconds)
        summary.overlapped = {name: round(seconds, 4) for name, seconds in timer.overlapped.items()}
        if timer.first_stage_at is not None and summary.engine == "local":  # Ray workers keep their own clocks
            summary.cold_start = timer.first_stage_at - entered + (startup_seconds or 0.0)
        write_text(out / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    except OSError as exc:
        raise _folder_error(out, exc, "write the dataset outputs") from None
    return summary

