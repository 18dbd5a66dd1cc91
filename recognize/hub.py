"""Weights and assets: model cards, one cache directory, resumable verified downloads.

A `ModelCard` names the files a model needs (url, sha256, size). Plugins register cards through
the `register_models` hook; stages ask for a file with `ensure_file(card, filename)` (or
`resolve_path(value, card, filename)` when a recipe may give an explicit local path) and get a
verified local path, or one `ModelFileError` line that says which file is missing, its URL and
the exact path to put it at.

Files live at `cache_dir()/models/<card>/<filename>`. A download goes into `<filename>.part`
(resumed with an HTTP Range request after an interruption), is checked against the card's size
and sha256, and is renamed into place only when it is whole. A `<filename>.lock` (fcntl) keeps
two processes from fetching the same file at once. The sha256 of a verified file is remembered
in a `<filename>.verified` sidecar keyed by size and mtime, so a 5 GB checkpoint is hashed once,
not on every load.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from recognize.atomic import write_text
from recognize.errors import ModelFileError, RecognizeError, SettingError

__all__ = [
    "DownloadLimits",
    "FileRef",
    "ModelCard",
    "ModelFile",
    "cache_dir",
    "download",
    "download_files",
    "ensure_file",
    "ensure_files",
    "file_path",
    "file_state",
    "get_card",
    "is_offline",
    "missing_files",
    "resolve_path",
    "sha256_file",
]

#: Seconds a stalled connection may stay silent before the attempt counts as interrupted.
DEFAULT_TIMEOUT = 60.0
#: Seconds one file's download may take in all, attempts included (RECOGNIZE_DOWNLOAD_DEADLINE).
#: 6 hours: the largest checkpoint (~3 GB) at 150 KB/s; a slower link is better served by hand.
DEFAULT_DEADLINE = 6 * 3600.0
#: Bytes per second below which a transfer counts as stalled (RECOGNIZE_DOWNLOAD_MIN_RATE), measured
#: over RECOGNIZE_DOWNLOAD_RATE_WINDOW seconds, as curl's --speed-limit/--speed-time: a server that
#: trickles a byte a second never trips the per-read timeout but would never finish.
DEFAULT_MIN_RATE = 1024.0
DEFAULT_RATE_WINDOW = 60.0
#: Transfer attempts per file; each later attempt resumes from the `.part` file.
DEFAULT_ATTEMPTS = 3
_CHUNK = 1 << 20
_USER_AGENT = "recognize-hub/0.1 (+https://github.com/xinyu1205/recognize-anything)"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class ModelFile:
    """One downloadable file; `sha256`/`size` are None where the publisher gives none."""

    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        # The filename becomes a path component in the cache: keep it a plain name.
        if not _SAFE_NAME.match(self.filename) or self.filename.endswith((".part", ".lock", ".verified")):
            raise ValueError(f"model file name {self.filename!r} must be a plain file name")
        if self.sha256 is not None:
            object.__setattr__(self, "sha256", self.sha256.lower())
            if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
                raise ValueError(f"sha256 of {self.filename!r} must be 64 hex digits")
        if self.size is not None and self.size < 0:
            raise ValueError(f"size of {self.filename!r} must be >= 0")


@dataclass(frozen=True)
class ModelCard:
    """A named set of files (weights, vocabularies, tag lists) that a model needs."""

    name: str
    files: tuple[ModelFile, ...]
    description: str = ""
    homepage: str | None = None
    license: str | None = None

    def __post_init__(self) -> None:
        if not _SAFE_NAME.match(self.name):
            raise ValueError(f"model card name {self.name!r} must be a plain name (letters, digits, ._+-)")
        object.__setattr__(self, "files", tuple(self.files))
        names = [f.filename for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError(f"model card {self.name!r} lists a file twice")

    @property
    def size(self) -> int | None:
        """Total bytes, or None when any file's size is unknown."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[arg-type]

    def file(self, filename: str) -> ModelFile:
        for item in self.files:
            if item.filename == filename:
                return item
        known = ", ".join(f.filename for f in self.files)
        raise ModelFileError(f"model {self.name!r} has no file {filename!r}; its files: {known}")


@dataclass(frozen=True)
class FileRef:
    """One file of one registered card that a stage needs (`Stage.model_files()` lists them).

    `optional`: needed only for some inputs (e.g. a tag list read only when a caption is given):
    `recognize models download --recipe` fetches it, but a stage does not refuse to start without it.
    """

    card: str
    filename: str
    optional: bool = False

    def __str__(self) -> str:
        return f"{self.card}/{self.filename}"


# ----------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """$RECOGNIZE_HOME, else $XDG_CACHE_HOME/recognize, else ~/.cache/recognize.

    Raises `SettingError` (one line) when the setting names a file, or a path under a file."""
    home = os.environ.get("RECOGNIZE_HOME")
    if home:
        return _usable_folder(Path(home).expanduser(), f"RECOGNIZE_HOME={home}")
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return _usable_folder(Path(xdg).expanduser() / "recognize", f"XDG_CACHE_HOME={xdg}")
    return _usable_folder(Path.home() / ".cache" / "recognize", "the cache folder")


def _usable_folder(path: Path, setting: str) -> Path:
    """`path` if it is a folder or can become one (no file in the way)."""
    for place in (path, *path.parents):
        if place.exists():
            if not place.is_dir():
                where = "is a file" if place == path else f"is under {place}, which is a file"
                raise SettingError(f"{setting}: {path} {where}; point it at a folder (it is created if missing)")
            return path
    return path


def env_number(name: str, default: float, allow_zero: bool = False) -> float:
    """A numeric setting from the environment (`default` when unset): positive, or >= 0 with
    `allow_zero`; anything else, NaN and infinity included, is a one-line `SettingError`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value >= 0 if allow_zero else value > 0) or value == float("inf"):
        kind = "a number >= 0" if allow_zero else "a positive number"
        raise SettingError(f"{name}={raw!r}: expected {kind} (default {default:g})")
    return value


@dataclass(frozen=True)
class DownloadLimits:
    """How long a download may take: per read, in total, and the slowest acceptable rate.

    From the environment: RECOGNIZE_DOWNLOAD_TIMEOUT (seconds of silence), RECOGNIZE_DOWNLOAD_DEADLINE
    (seconds per file, all attempts), RECOGNIZE_DOWNLOAD_MIN_RATE (bytes/s; 0 turns the check off)
    over RECOGNIZE_DOWNLOAD_RATE_WINDOW seconds.
    """

    timeout: float = DEFAULT_TIMEOUT
    deadline: float = DEFAULT_DEADLINE
    min_rate: float = DEFAULT_MIN_RATE
    rate_window: float = DEFAULT_RATE_WINDOW

    @classmethod
    def from_env(cls, timeout: float | None = None) -> DownloadLimits:
        return cls(
            timeout=timeout if timeout is not None else env_number("RECOGNIZE_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT),
            deadline=env_number("RECOGNIZE_DOWNLOAD_DEADLINE", DEFAULT_DEADLINE),
            min_rate=env_number("RECOGNIZE_DOWNLOAD_MIN_RATE", DEFAULT_MIN_RATE, allow_zero=True),
            rate_window=env_number("RECOGNIZE_DOWNLOAD_RATE_WINDOW", DEFAULT_RATE_WINDOW),
        )


def is_offline() -> bool:
    """True when RECOGNIZE_OFFLINE asks for no network access."""
    return os.environ.get("RECOGNIZE_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def get_card(name: str | ModelCard) -> ModelCard:
    """The registered card called `name` (a card passes through unchanged)."""
    if isinstance(name, ModelCard):
        return name
    from recognize.plugins import model_cards

    cards = model_cards()
    if name not in cards:
        known = ", ".join(sorted(cards)) or "none"
        raise RecognizeError(f"unknown model {name!r}; known models: {known}")
    return cards[name]


def file_path(card: str | ModelCard, filename: str) -> Path:
    """Where `filename` of `card` lives in the cache, whether or not it is there yet."""
    card = get_card(card)
    card.file(filename)
    return cache_dir() / "models" / card.name / filename


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def file_state(card: str | ModelCard, filename: str) -> str:
    """'present', 'partial' (a resumable .part exists) or 'missing'; cheap: checks size, never hashes."""
    card = get_card(card)
    item = card.file(filename)
    path = file_path(card, filename)
    if path.is_file() and (item.size is None or path.stat().st_size == item.size):
        return "present"
    if _part(path).is_file():
        return "partial"
    return "missing"


# ----------------------------------------------------------------------------- verification


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _hash_file(path: Path, limit: int | None = None, hasher: hashlib._Hash | None = None) -> hashlib._Hash:
    hasher = hasher or hashlib.sha256()
    remaining = limit
    with open(path, "rb") as handle:
        while remaining is None or remaining > 0:
            chunk = handle.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
            if not chunk:
                break
            hasher.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return hasher


def _remember_digest(path: Path, digest: str) -> None:
    st = path.stat()
    with contextlib.suppress(OSError):  # a read-only cache still works, it just re-hashes
        write_text(_sidecar(path), json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}))


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of any file, streamed (no sidecar is written beside it)."""
    return _hash_file(Path(path)).hexdigest()


def _digest(path: Path) -> str:
    """sha256 of `path`, from the sidecar when size and mtime still match."""
    st = path.stat()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(_sidecar(path).read_text())
        if saved["size"] == st.st_size and saved["mtime_ns"] == st.st_mtime_ns:
            return str(saved["sha256"])
    digest = _hash_file(path).hexdigest()
    _remember_digest(path, digest)
    return digest


def _verify(card: ModelCard, item: ModelFile, path: Path) -> None:
    """Raise ModelFileError when the file at `path` has the wrong size or sha256."""
    size = path.stat().st_size
    fix = f"delete it and run `recognize models download {card.name}`, or put a good copy of {item.url} there"
    if item.size is not None and size != item.size:
        raise ModelFileError(f"{path} is {size} bytes, expected {item.size}; {fix}")
    if item.sha256 is not None:
        digest = _digest(path)
        if digest != item.sha256:
            raise ModelFileError(f"{path} has sha256 {digest}, expected {item.sha256}; {fix}")


# ----------------------------------------------------------------------------- downloading


class _Interrupted(Exception):
    """A transfer that stopped early; the .part file keeps what arrived."""


@contextlib.contextmanager
def _locked(path: Path, progress: bool) -> Iterator[None]:
    """Hold an exclusive fcntl lock on `<path>.lock` (blocks while another process downloads)."""
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"waiting for another process downloading {path.name} ...", file=sys.stderr)
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _Resume:
    """Running sha256 of the .part file, so resuming does not re-read what was already hashed."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.hashed = 0

    def sync(self, part: Path, offset: int) -> None:
        if self.hashed != offset:
            self.hasher = _hash_file(part, offset) if offset else hashlib.sha256()
            self.hashed = offset


def _total_from(response: http.client.HTTPResponse, offset: int) -> int | None:
    content_range = response.headers.get("Content-Range")
    if content_range:
        match = re.match(r"bytes\s+\d+-\d+/(\d+)", content_range)
        if match:
            return int(match.group(1))
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


class _TooSlow(Exception):
    """The total deadline passed: no further attempt."""


def _transfer(item: ModelFile, path: Path, state: _Resume, progress: bool, limits: DownloadLimits,
              deadline_at: float) -> None:
    """One attempt: fetch the rest of `item` into the .part file (raises _Interrupted if cut short,
    _TooSlow when the total deadline passes)."""
    timeout = max(0.001, min(limits.timeout, deadline_at - time.monotonic()))
    part = _part(path)
    offset = part.stat().st_size if part.exists() else 0
    if item.size is not None and offset > item.size:
        part.unlink()
        offset = 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(item.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            # The .part may already be whole (killed before the rename); verification decides.
            if item.size is None or offset == item.size:
                state.sync(part, offset)
                return
            part.unlink()
            state.sync(part, 0)
            raise _Interrupted("server refused to resume; starting over") from exc
        raise ModelFileError(
            f"cannot download {item.filename} from {item.url}: HTTP {exc.code} {_one_line(exc.reason)}; "
            f"download it by hand and put it at {path}"
        ) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, (TimeoutError, ConnectionResetError, ConnectionAbortedError)):
            raise _Interrupted(_one_line(reason) or f"timed out after {timeout:g}s") from exc
        raise ModelFileError(
            f"cannot download {item.filename} from {item.url}: {_one_line(reason)}; "
            f"download it by hand and put it at {path}"
        ) from exc

    with response:
        if response.status == 206:
            if _range_start(response) != offset:
                part.unlink(missing_ok=True)
                raise _Interrupted("server resumed at the wrong offset; starting over")
            mode = "ab"
        else:  # the server ignored the Range header: start over
            offset, mode = 0, "wb"
        total = _total_from(response, offset)
        if total is None:
            total = item.size
        state.sync(part, offset)
        received = offset
        bar = tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=item.filename, file=sys.stderr, disable=not progress, leave=True,
        )
        window_start, window_bytes = time.monotonic(), received
        with bar, open(part, mode) as out:
            try:
                while True:
                    # read1: whatever one recv brings, so a trickling server is measured, not waited on
                    chunk = response.read1(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    state.hasher.update(chunk)
                    received += len(chunk)
                    state.hashed = received
                    bar.update(len(chunk))
                    now = time.monotonic()
                    if now > deadline_at:
                        raise _TooSlow(f"not finished after {limits.deadline:g} s "
                                       f"({received} of {total if total is not None else '?'} bytes; "
                                       "RECOGNIZE_DOWNLOAD_DEADLINE)")
                    if now - window_start >= limits.rate_window:
                        rate = (received - window_bytes) / (now - window_start)
                        if rate < limits.min_rate:
                            raise _Interrupted(f"slower than {limits.min_rate:g} bytes/s for "
                                               f"{limits.rate_window:g} s (RECOGNIZE_DOWNLOAD_MIN_RATE)")
                        window_start, window_bytes = now, received
            except (http.client.HTTPException, OSError) as exc:
                out.flush()
                raise _Interrupted(f"connection lost after {received} bytes ({_one_line(exc)})") from exc
            finally:
                out.flush()
                os.fsync(out.fileno())
        if total is not None and received < total:
            raise _Interrupted(f"connection closed after {received} of {total} bytes")


def _fetch(card: ModelCard, item: ModelFile, path: Path, progress: bool, limits: DownloadLimits,
           attempts: int) -> Path:
    """Download `item` to `path` under the lock; resume, verify, then rename into place."""
    try:
        with _writable_cache(path):
            return _fetch_locked(card, item, path, progress, limits, attempts)
    except _CacheNotWritable as exc:
        raise ModelFileError(
            f"cannot write {item.filename} into the cache at {path.parent} ({exc}); set RECOGNIZE_HOME to a "
            f"writable folder, or put the file there by hand"
        ) from None


class _CacheNotWritable(Exception):
    pass


@contextlib.contextmanager
def _writable_cache(path: Path) -> Iterator[None]:
    """OS errors about the cache folder itself (read-only, full, permissions) as one line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _CacheNotWritable(exc.strerror or str(exc)) from None
    try:
        yield
    except OSError as exc:
        if isinstance(exc, (ConnectionError, TimeoutError)) or exc.filename is None:
            raise
        raise _CacheNotWritable(f"{exc.strerror or exc}: {exc.filename}") from None


def _fetch_locked(card: ModelCard, item: ModelFile, path: Path, progress: bool, limits: DownloadLimits,
                  attempts: int) -> Path:
    part = _part(path)
    with _locked(path, progress):
        if path.exists():  # another process finished it while we waited
            _verify(card, item, path)
            return path
        state = _Resume()
        reason = ""
        deadline_at = time.monotonic() + limits.deadline
        for _ in range(max(1, attempts)):
            try:
                _transfer(item, path, state, progress, limits, deadline_at)
                break
            except _Interrupted as exc:
                reason = str(exc)
                if time.monotonic() > deadline_at:
                    break
            except _TooSlow as exc:
                raise ModelFileError(
                    f"download of {item.filename} from {item.url} stopped: {exc}; run it again to resume from "
                    f"{part}, raise the deadline, or put the file at {path}"
                ) from None
        else:
            raise ModelFileError(
                f"download of {item.filename} from {item.url} was interrupted ({reason}); run it again to resume "
                f"from {part}, or put the file at {path}"
            )
        size = part.stat().st_size
        digest = state.hasher.hexdigest() if state.hashed == size else _hash_file(part).hexdigest()
        problem = None
        if item.size is not None and size != item.size:
            problem = f"got {size} bytes, expected {item.size}"
        elif item.sha256 is not None and digest != item.sha256:
            problem = f"sha256 {digest}, expected {item.sha256}"
        if problem:
            part.unlink()
            raise ModelFileError(
                f"download of {item.filename} from {item.url} is corrupt ({problem}); the partial file was "
                f"deleted: try again, or put a good copy at {path}"
            )
        os.replace(part, path)
        _remember_digest(path, digest)
    return path


def ensure_file(card: str | ModelCard, filename: str, download: bool = True, progress: bool = True) -> Path:
    """A verified local path to `filename` of `card`, downloading it when missing and allowed."""
    card = get_card(card)
    item = card.file(filename)
    path = file_path(card, filename)
    if path.exists():
        _verify(card, item, path)
        return path
    if is_offline():
        raise ModelFileError(
            f"missing {item.filename} for model {card.name!r} and RECOGNIZE_OFFLINE=1: "
            f"download {item.url} and put it at {path}"
        )
    if not download:
        raise ModelFileError(
            f"missing {item.filename} for model {card.name!r}: run `recognize models download {card.name}`, "
            f"or download {item.url} and put it at {path}"
        )
    return _fetch(card, item, path, progress, DownloadLimits.from_env(), DEFAULT_ATTEMPTS)


def download(
    card: str | ModelCard,
    progress: bool = True,
    *,
    timeout: float | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
) -> list[Path]:
    """Fetch every file of `card` into the cache (an explicit request: a corrupt cached copy is replaced).

    `timeout` (seconds of silence per read) defaults to RECOGNIZE_DOWNLOAD_TIMEOUT; the total deadline
    and minimum rate come from the environment (see `DownloadLimits`)."""
    card = get_card(card)
    limits = DownloadLimits.from_env(timeout)
    if is_offline():
        missing = [f for f in card.files if not file_path(card, f.filename).exists()]
        if missing:
            listed = "; ".join(f"{item.url} -> {file_path(card, item.filename)}" for item in missing)
            raise ModelFileError(
                f"cannot download {len(missing)} file(s) of model {card.name!r}: offline (RECOGNIZE_OFFLINE=1); "
                f"put each at its path: {listed}"
            )
    paths = []
    for item in card.files:
        path = file_path(card, item.filename)
        if path.exists():
            try:
                _verify(card, item, path)
                paths.append(path)
                continue
            except ModelFileError:
                path.unlink()
                _sidecar(path).unlink(missing_ok=True)
        paths.append(_fetch(card, item, path, progress, limits, attempts))
    return paths


def _unique(refs: list[FileRef] | tuple[FileRef, ...]) -> list[FileRef]:
    seen: dict[tuple[str, str], FileRef] = {}
    for ref in refs:
        key = (ref.card, ref.filename)
        if key not in seen or (seen[key].optional and not ref.optional):
            seen[key] = ref
    return list(seen.values())


def missing_files(refs: list[FileRef] | tuple[FileRef, ...]) -> list[FileRef]:
    """The refs whose file is not in the cache (each card/file once; cheap: never hashes)."""
    return [ref for ref in _unique(refs) if not file_path(ref.card, ref.filename).exists()]


def _where(ref: FileRef) -> str:
    item = get_card(ref.card).file(ref.filename)
    return f"{item.url} -> {file_path(ref.card, ref.filename)}"


def ensure_files(refs: list[FileRef] | tuple[FileRef, ...], download: bool = True,
                 progress: bool = True) -> list[Path]:
    """Verified local paths of every required ref, downloading what is missing when allowed.

    Offline (or with `download=False`) one `ModelFileError` names every missing file, its URL and
    where to put it, not just the first one. Optional refs are skipped here (fetched on need).
    """
    required = [ref for ref in _unique(refs) if not ref.optional]
    missing = missing_files(required)
    if missing and (is_offline() or not download):
        why = "RECOGNIZE_OFFLINE=1" if is_offline() else "downloads are off"
        listed = "; ".join(f"{ref} ({_where(ref)})" for ref in missing)
        raise ModelFileError(
            f"{len(missing)} model file{'s' if len(missing) > 1 else ''} missing and {why}: {listed}; run "
            f"`recognize models download --recipe RECIPE` where you are online, or put each file at its path"
        )
    return [ensure_file(ref.card, ref.filename, download=download, progress=progress) for ref in required]


def download_files(refs: list[FileRef] | tuple[FileRef, ...], progress: bool = True) -> list[Path]:
    """Fetch (and verify) every ref, optional ones included: what `models download --recipe` does."""
    refs = _unique(refs)
    if is_offline():
        missing = missing_files(refs)
        if missing:
            listed = "; ".join(f"{ref} ({_where(ref)})" for ref in missing)
            raise ModelFileError(f"cannot download {len(missing)} file(s): offline (RECOGNIZE_OFFLINE=1): {listed}")
    return [ensure_file(ref.card, ref.filename, download=True, progress=progress) for ref in refs]


def resolve_path(value: str | os.PathLike[str] | None, card: str | ModelCard, filename: str) -> Path:
    """A recipe's explicit local path (which must exist), or the cached file when none is given."""
    if value is None or str(value) == "":
        return ensure_file(card, filename)
    path = Path(value).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ModelFileError(
            f"{filename}: the path given for it, {path}, {what}; fix the path or leave it out to use the cache"
        )
    return path
