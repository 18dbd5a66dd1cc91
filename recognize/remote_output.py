"""`recognize run ... -o URL`: a run's output folder at any fsspec URL (s3://, gs://, az://, http(s)://).

Object stores cannot append to an object or rename one, and a reader must never see half an object.
So the run writes into a local staging folder (`$RECOGNIZE_HOME/outputs/<hash of the URL>`) exactly
as it writes a local `-o` (`recognize.runner.run_to_folder`, whose hooks for this are `on_ready` and `on_journal`),
and this module mirrors that folder with whole-object uploads (`put_file`: an object appears whole or
not at all, never an open remote file written in pieces) of immutable things only:

- once the run has refused nothing (inputs, names, recipe) and before models load: `manifest.json`
  (which also proves the URL is writable; a refused run leaves nothing remote);
- at each sync point (every `RECOGNIZE_SYNC_SECONDS`, default 30, and at the end): the per-image
  files and closed shards that the done journal's new lines point at, then those lines as a new
  object `.recognize/done/NNNNN.jsonl` (a journal segment). A shard is closed once the journal
  points past it (the `shards` output never appends to a shard after starting the next one); lines
  pointing into the open shard wait for the next sync, so a segment only ever names uploaded data;
- at the end: the last shard and segment, the dataset outputs (`coco.json`, ...), `summary.json`;
  when an error or Ctrl-C stops the run, the last shard and segment (what is finished is kept).

The remote layout is the local one, except that the journal is a series of segments instead of one
appended `done.jsonl`.

Resume: the remote segments are the truth. A run downloads them (in order, until the first number
that is missing) and the manifest; when the staging folder holds exactly that state (same segments,
recorded in `.recognize/remote.json`), it is used as is (its journal cut back to what was uploaded);
otherwise (another machine, a wiped cache) it is rebuilt: the journal from the segments, plus the
shards and per-image files the journal names, downloaded so that the usual resume-by-identity check
and the dataset outputs (`coco` reads every frame back) work locally. No remote folder is ever
listed to find results; the cost of a resume on a fresh machine is one GET per segment, per shard
and per per-image file (use the `shards` output at scale: ~10,000 frames per object).

A remote OUT holding another recipe's results is refused (exit 2) unless `--overwrite`, which first
removes the remote files the earlier run owns: its journal segments, every file its journal names,
its dataset outputs (from its manifest), `summary.json` and `manifest.json`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recognize.atomic import atomic_write, write_bytes, write_text
from recognize.engines.segment_store import PARTIAL_DIR
from recognize.errors import InputError, RecognizeError, first_line
from recognize.pipeline import Pipeline
from recognize.runner import (
    DONE_FILE,
    MANIFEST_FILE,
    STATE_DIR,
    SUMMARY_FILE,
    RunSummary,
    fingerprint,
    recipe_of,
    run_to_folder,
    write_manifest,
)
from recognize.sources import is_url, local_path

#: seconds between two uploads of the journal's new lines (and what they point at)
SYNC_SECONDS_ENV = "RECOGNIZE_SYNC_SECONDS"
DEFAULT_SYNC_SECONDS = 30.0
#: the remote journal: one immutable object per sync point
SEGMENTS_DIR = f"{STATE_DIR}/done"
#: in the staging folder: which remote segments its journal holds
STAGING_STATE = f"{STATE_DIR}/remote.json"
#: files a later mtime than the last journal line by this margin (coarse file-system clocks) are
#: taken for the dataset outputs `finish` wrote; erring this way re-uploads a file, never skips one
_MTIME_MARGIN_NS = 2_000_000_000


def run_to_output(pipeline: Pipeline, inputs: Iterable[str | os.PathLike[str]], output: str | os.PathLike[str],
                  **options: Any) -> RunSummary:
    """`run_to_folder` for a folder (a `file://` URL is a folder), `run_to_url` for any other URL."""
    if isinstance(output, str) and is_url(output):
        return run_to_url(pipeline, inputs, output, **options)
    return run_to_folder(pipeline, inputs, local_path(os.fspath(output)), **options)


def staging_folder(url: str) -> Path:
    """Where a run to `url` stages its files on this machine (one folder per URL)."""
    from recognize.hub import cache_dir

    return cache_dir() / "outputs" / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]


def sync_seconds() -> float:
    raw = os.environ.get(SYNC_SECONDS_ENV)
    if raw is None:
        return DEFAULT_SYNC_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        from recognize.errors import SettingError

        raise SettingError(f"{SYNC_SECONDS_ENV}={raw}: expected seconds >= 0 (0 uploads after every image)")
    return value


class RemoteFolder:
    """An output folder at an fsspec URL, written with whole-object uploads only.

    Every failure is one line: a missing backend package (s3fs, gcsfs, adlfs) or an unknown scheme
    is an `InputError` (exit 2) naming what to install; a server that cannot be reached, refuses
    access or fails an upload is a `RecognizeError` naming the object and the reason.
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        scheme = self.url.partition("://")[0].lower()
        try:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except ImportError as exc:
            package = _backend_package(scheme)
            raise InputError(f"-o {url}: writing to {scheme}:// needs the {package} package "
                             f"(pip install {package}); {first_line(exc)}") from None
        except ValueError as exc:
            raise InputError(f"-o {url}: no fsspec filesystem for {scheme}:// ({first_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - a backend that fails to start (bad credentials config)
            raise InputError(f"-o {url}: cannot open ({type(exc).__name__}: {first_line(exc)})") from None
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.local = "file" in protocols or "local" in protocols
        # HTTP: PUT creates the resource at this URL (RFC 9110); fsspec's default verb is POST
        self._put_options = {"method": "put"} if {"http", "https"} & set(protocols) else {}

    def path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    @contextlib.contextmanager
    def _talking(self, doing: str, relative: str) -> Iterator[None]:
        try:
            yield
        except RecognizeError:
            raise
        except PermissionError as exc:
            raise RecognizeError(f"{self.url}/{relative}: cannot {doing}: permission denied "
                                 f"({first_line(exc)}); check the credentials") from None
        except Exception as exc:  # noqa: BLE001 - every client library has its own errors (aiohttp, botocore)
            raise RecognizeError(f"{self.url}/{relative}: cannot {doing} ({type(exc).__name__}: "
                                 f"{first_line(exc)})") from None

    def read(self, relative: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
        with self._talking("read", relative):
            try:
                return self.fs.cat_file(self.path(relative))
            except FileNotFoundError:
                return None

    def download(self, relative: str, target: Path) -> bool:
        """Copy the object to `target` (atomically); False when there is none."""
        with self._talking("download", relative):
            try:
                with self.fs.open(self.path(relative), "rb") as source, atomic_write(target, "wb") as handle:
                    shutil.copyfileobj(source, handle, 1 << 20)
            except FileNotFoundError:
                return False
        return True

    def upload(self, files: list[tuple[Path, str]]) -> None:
        """Upload local files as whole objects (many at once where the backend is asynchronous)."""
        if not files:
            return
        if self.local:  # fsspec's local put copies in place: a reader could see half a file
            for source, relative in files:
                with self._talking("write", relative), source.open("rb") as handle, \
                        atomic_write(self.path(relative), "wb") as target:
                    shutil.copyfileobj(handle, target, 1 << 20)
            return
        where = files[0][1] if len(files) == 1 else f"{files[0][1]} (and {len(files) - 1} more)"
        with self._talking("upload", where):
            if len(files) == 1:
                self.fs.put_file(str(files[0][0]), self.path(files[0][1]), **self._put_options)
            else:
                self.fs.put([str(source) for source, _ in files], [self.path(rel) for _, rel in files],
                            **self._put_options)

    def write(self, relative: str, data: bytes, scratch: Path) -> None:
        """Upload `data` as one object, through a file in `scratch` (what every backend can put)."""
        temporary = scratch / f".upload.{os.getpid()}.tmp"
        write_bytes(temporary, data)
        try:
            self.upload([(temporary, relative)])
        finally:
            temporary.unlink(missing_ok=True)

    def names(self) -> list[str]:
        """The names at the top of the folder; [] when it has none or cannot be listed (a plain
        HTTP server): only used to refuse a non-empty folder that has no manifest."""
        try:
            entries = self.fs.ls(self.root, detail=False)
        except Exception:  # noqa: BLE001 - not listable: nothing known
            return []
        return [str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries]

    def remove(self, relatives: list[str]) -> None:
        """Delete objects (missing ones are fine); a name that is a folder goes with all it holds
        (an output's own folder, such as YOLO's `labels/`)."""
        if not relatives:
            return
        where = relatives[0] if len(relatives) == 1 else f"{relatives[0]} (and {len(relatives) - 1} more)"
        with self._talking("delete", where):
            try:
                files, folders = [], []
                for relative in relatives:
                    path = self.path(relative)
                    if self.fs.isdir(path):
                        folders.append(path)
                    elif self.fs.exists(path):
                        files.append(path)
                for folder in folders:
                    self.fs.rm(folder, recursive=True)
                files = [path for path in files if not any(path.startswith(f"{folder}/") for folder in folders)]
                if files:
                    self.fs.rm(files)
            except NotImplementedError:
                raise InputError(f"-o {self.url}: this filesystem cannot delete files, so --overwrite cannot "
                                 "remove the earlier run's files; delete them on the server, or choose another -o"
                                 ) from None

    def segments(self) -> Iterator[tuple[str, bytes]]:
        """The journal segments in order, until the first missing number (uploads are sequential)."""
        number = 0
        while (data := self.read(segment_name(number))) is not None:
            yield segment_name(number), data
            number += 1


def segment_name(number: int) -> str:
    return f"{SEGMENTS_DIR}/{number:05d}.jsonl"


def _backend_package(scheme: str) -> str:
    """What to pip install for this scheme (`s3` -> `s3fs`), from fsspec's own registry."""
    from fsspec.registry import known_implementations

    spec = known_implementations.get(scheme) or {}
    package = str(spec.get("class", "")).split(".", 1)[0]
    if package == "fsspec":  # built into fsspec, needing an extra (http: aiohttp)
        return '"fsspec[http]"' if scheme in ("http", "https") else f'"fsspec[{scheme}]"'
    return package or f"an fsspec backend for {scheme}://"


@dataclass
class RemoteJournal:
    """The remote done journal, read segment by segment into a local file (never whole in memory)."""

    path: Path  # the segments, concatenated, on this machine's disk
    hashes: list[str] = field(default_factory=list)  # sha256 of each segment, in order
    size: int = 0
    images: int = 0  # lines that name an image
    data: dict[str, None] = field(default_factory=dict)  # every file a line names (what --overwrite deletes)
    ours: dict[str, None] = field(default_factory=dict)  # files of this recipe's finished images

    @classmethod
    def download(cls, remote: RemoteFolder, path: Path, recipe_id: str) -> RemoteJournal:
        journal = cls(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:
            for _, segment in remote.segments():
                handle.write(segment)
                journal.hashes.append(hashlib.sha256(segment).hexdigest())
                journal.size += len(segment)
                for line in segment.splitlines():
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
                        continue
                    journal.images += 1
                    named = dict.fromkeys(_data_of(record))
                    journal.data.update(named)
                    if record.get("recipe") == recipe_id and not record.get("error"):
                        journal.ours.update(named)
        return journal

    def segment_names(self) -> list[str]:
        return [segment_name(number) for number in range(len(self.hashes))]


def _data_of(record: dict[str, Any]) -> list[str]:
    """Every file a journal record points at: its per-image files and its shards."""
    files = record.get("files") if isinstance(record.get("files"), dict) else {}
    appended = record.get("appended") if isinstance(record.get("appended"), dict) else {}
    return [*files, *appended]


class JournalSync:
    """Uploads the staging journal's new lines, after the data they point at (see the module doc)."""

    def __init__(self, remote: RemoteFolder, staging: Path, *, synced: int, segments: list[str],
                 interval: float) -> None:
        self.remote, self.staging, self.interval = remote, staging, interval
        self.journal = staging / STATE_DIR / DONE_FILE
        self.synced = synced  # bytes of the local journal that are remote
        self.segments = segments  # sha256 of each remote segment, in order
        self.uploaded_shards: set[str] = set()
        self.last_sync = time.monotonic()
        self.last_line_ns = time.time_ns()

    def on_journal(self) -> None:
        """After each journal line (`run_to_folder`'s hook)."""
        self.last_line_ns = time.time_ns()
        if time.monotonic() - self.last_sync >= self.interval:
            self.sync()

    def sync(self, *, final: bool = False) -> None:
        """Upload what the new journal lines point at, then those lines as a segment. `final`: the
        run writes nothing more, so every shard is closed."""
        self.last_sync = time.monotonic()
        try:
            with self.journal.open("rb") as handle:
                handle.seek(self.synced)
                new = handle.read()
        except FileNotFoundError:
            return
        new = new[: new.rfind(b"\n") + 1]
        lines = new.splitlines(keepends=True)
        records = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            records.append(record if isinstance(record, dict) else {})
        open_shard = None
        if not final:  # the shard the newest line points into may still grow
            open_shard = next((shard for record in reversed(records)
                               for shard in (record.get("appended") or {})), None)
        ready = 0
        files: dict[str, None] = {}
        shards: dict[str, None] = {}
        for line, record in zip(lines, records):
            appended = record.get("appended") if isinstance(record.get("appended"), dict) else {}
            if open_shard is not None and open_shard in appended:
                break
            ready += len(line)
            if not record.get("error"):
                files.update(dict.fromkeys(record.get("files") or {}))
                shards.update(dict.fromkeys(shard for shard in appended if shard not in self.uploaded_shards))
        if not ready:
            return
        self.remote.upload([(self.staging / shard, shard) for shard in shards])
        self.uploaded_shards.update(shards)
        self.remote.upload([(self.staging / relative, relative) for relative in files])
        segment = new[:ready]
        self.remote.write(segment_name(len(self.segments)), segment, self.staging / STATE_DIR)
        # one assignment, no call between: on CPython a Ctrl-C is raised before it (the next sync writes
        # this segment again, under the same name) or after it, not between the list and the count (a
        # duplicated segment would repeat its lines; harmless, as the last line of a name wins)
        self.segments, self.synced = [*self.segments, hashlib.sha256(segment).hexdigest()], self.synced + ready
        save_staging_state(self.staging, self.remote.url, self.segments, self.synced)


def save_staging_state(staging: Path, url: str, segments: list[str], synced: int) -> None:
    write_text(staging / STAGING_STATE, json.dumps({"url": url, "segments": segments, "synced": synced}))


def _read_staging_state(staging: Path) -> dict[str, Any]:
    try:
        state = json.loads((staging / STAGING_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _check_remote(url: str, recipe: dict[str, Any], manifest: dict[str, Any] | None, images: int,
                  names: list[str]) -> None:
    """`recognize.runner.check_manifest`'s refusals for a remote OUT (messages name the URL)."""
    has_results = images > 0 or bool(set(names) - {MANIFEST_FILE, SUMMARY_FILE, STATE_DIR, PARTIAL_DIR})
    if not has_results:
        return
    if manifest is None:
        raise InputError(f"{url} is not empty and has no readable {MANIFEST_FILE}, so its files may come from "
                         "another recipe; use --overwrite to write into it anyway, or another -o")
    if manifest.get("pipeline") != recipe:
        raise InputError(f"{url} holds results of a different recipe or settings (see {url}/{MANIFEST_FILE}); "
                         "use --overwrite to redo them, or another -o")


def _owned_files(manifest: dict[str, Any] | None, journal: RemoteJournal) -> list[str]:
    """The remote files an earlier run owns (what `--overwrite` deletes): what its journal names, the
    dataset files its manifest's outputs write, and the journal itself."""
    owned: dict[str, None] = dict(journal.data)
    for entry in (manifest or {}).get("pipeline", {}).get("outputs", []) if isinstance(manifest, dict) else []:
        try:
            from recognize import plugins

            names = plugins.get_stage(entry["use"])(**(entry.get("with") or {})).run_files()
        except Exception:  # noqa: BLE001, S112 - a plugin no longer installed: its files stay
            continue
        owned.update(dict.fromkeys(names))
    owned.update(dict.fromkeys([SUMMARY_FILE, *journal.segment_names(), MANIFEST_FILE]))
    return list(owned)


def _prepare_staging(remote: RemoteFolder, staging: Path, journal: RemoteJournal) -> None:
    """Make the staging folder hold the remote run's state (see the module doc)."""
    local = staging / STATE_DIR / DONE_FILE
    state = _read_staging_state(staging)
    current = (state.get("url") == remote.url and state.get("segments") == journal.hashes
               and state.get("synced") == journal.size and local.is_file() and local.stat().st_size >= journal.size)
    if current:  # this machine's earlier run: its files are here; lines never uploaded are redone
        with local.open("r+b") as handle:
            handle.truncate(journal.size)
        journal.path.unlink(missing_ok=True)
        return
    if staging.exists():
        shutil.rmtree(staging)
    (staging / STATE_DIR).mkdir(parents=True)
    os.replace(journal.path, local)
    for relative in journal.ours:  # missing ones are simply redone by the run
        remote.download(relative, staging / relative)
    save_staging_state(staging, remote.url, journal.hashes, journal.size)


def _finished_outputs(pipeline: Pipeline, staging: Path, since_ns: int) -> list[tuple[Path, str]]:
    """The dataset outputs `finish` wrote (files and folders the outputs name in `run_files`, changed
    after the last journal line); per-image files and shards went up with the journal."""
    found: list[tuple[Path, str]] = []
    for stage in pipeline.outputs:
        if stage.name in ("shards", "json"):
            continue
        for name in stage.run_files():
            top = staging / name
            paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
            for path in paths:
                if path.stat().st_mtime_ns >= since_ns - _MTIME_MARGIN_NS:
                    found.append((path, path.relative_to(staging).as_posix()))
    return found


@contextlib.contextmanager
def _one_run_per_staging(staging: Path, url: str) -> Iterator[None]:
    """An exclusive lock on `<staging>.lock`: two runs on one machine must not share a staging folder
    (the remote has no lock: runs on two machines writing one URL are the user's to avoid)."""
    import fcntl

    try:
        staging.parent.mkdir(parents=True, exist_ok=True)
        handle = open(staging.with_name(f"{staging.name}.lock"), "a")  # noqa: SIM115 - held for the run
    except OSError as exc:
        raise RecognizeError(f"{staging}: cannot stage the run for {url} ({first_line(exc)}); "
                             "check RECOGNIZE_HOME") from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another recognize run on this machine is writing {url}; "
                             "wait for it to finish, or choose another -o") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def run_to_url(pipeline: Pipeline, inputs: Iterable[str | os.PathLike[str]], url: str, *,
               overwrite: bool = False, **options: Any) -> RunSummary:
    """`run_to_folder` into a local staging folder, mirrored to `url` (see the module doc)."""
    began = (time.perf_counter(), datetime.now(timezone.utc).isoformat(timespec="seconds"))
    remote = RemoteFolder(url)  # imports the URL's fsspec backend (s3fs, ...): part of the run's time
    staging = staging_folder(remote.url)
    interval = sync_seconds()
    with _one_run_per_staging(staging, remote.url):
        return _run_staged(pipeline, inputs, remote, staging, interval, began, overwrite=overwrite, **options)


def _as_bad_output(exc: RecognizeError) -> RecognizeError:
    """A URL that cannot be used before the run starts is bad input (exit 2), as a local -o."""
    if isinstance(exc, InputError) or type(exc) is not RecognizeError:
        return exc
    return InputError(f"{exc}; choose another -o or fix access to it")


def _run_staged(pipeline: Pipeline, inputs: Iterable[str | os.PathLike[str]], remote: RemoteFolder, staging: Path,
                interval: float, began: tuple[float, str], *, overwrite: bool, **options: Any) -> RunSummary:
    """`began`: the clock and the UTC time when `run_to_url` was called: the run counts from there, so
    opening the URL and staging its journal are in `summary.json` (`prepare`), as the last sync and
    upload are (`finish`, `on_finish`); only the upload of `summary.json` itself is left out."""
    url = remote.url
    recipe = recipe_of(pipeline)
    recipe_id = fingerprint(recipe)
    download = staging.with_name(f"{staging.name}.journal.part")
    try:  # before the run: a URL that cannot be used is bad input (exit 2), as a local -o
        manifest_bytes = remote.read(MANIFEST_FILE)
        try:
            manifest = json.loads(manifest_bytes) if manifest_bytes is not None else None
        except ValueError:
            manifest = None
        if not (isinstance(manifest, dict) and isinstance(manifest.get("pipeline"), dict)):
            manifest = None
        journal = RemoteJournal.download(remote, download, recipe_id)
        if overwrite:
            remote.remove(_owned_files(manifest, journal))
            journal, manifest = RemoteJournal(download), None
            download.write_bytes(b"")
            if staging.exists():
                shutil.rmtree(staging)
        else:
            _check_remote(remote.url, recipe, manifest, journal.images, [] if journal.images else remote.names())
        _prepare_staging(remote, staging, journal)
        upload_manifest = manifest is None or manifest.get("pipeline") != recipe
        if upload_manifest:
            write_manifest(pipeline, recipe, staging)
        elif not (staging / MANIFEST_FILE).is_file():
            write_bytes(staging / MANIFEST_FILE, manifest_bytes or b"")
    except RecognizeError as exc:
        raise _as_bad_output(exc) from None
    except OSError as exc:
        raise RecognizeError(f"{staging}: cannot stage the run for {url} ({first_line(exc)}); "
                             "check RECOGNIZE_HOME") from None
    finally:
        download.unlink(missing_ok=True)  # moved into the staging folder, or not needed

    def on_ready() -> None:
        """Once the run has refused nothing (bad inputs leave no remote file), before models load:
        the manifest goes up, which also proves the URL is writable."""
        if upload_manifest:
            try:
                remote.upload([(staging / MANIFEST_FILE, MANIFEST_FILE)])
            except RecognizeError as exc:
                raise _as_bad_output(exc) from None

    sync = JournalSync(remote, staging, synced=journal.size, segments=list(journal.hashes), interval=interval)

    def on_finish() -> None:
        """The run wrote everything: the last journal lines and every finished output go up."""
        sync.sync(final=True)
        remote.upload(_finished_outputs(pipeline, staging, sync.last_line_ns))

    try:
        summary = run_to_folder(pipeline, inputs, staging, overwrite=overwrite, on_journal=sync.on_journal,
                                on_ready=on_ready, on_finish=on_finish, began=began, **options)
    except BaseException:
        with contextlib.suppress(Exception):  # keep what is finished (Ctrl-C, a stopped run); never hide why
            sync.sync(final=True)
        raise
    summary.output_dir = remote.url
    write_text(staging / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    remote.upload([(staging / SUMMARY_FILE, SUMMARY_FILE)])
    return summary
