"""Where images come from at scale: URLs (through fsspec), list files and manifests.

A 14-million-image run does not start from one folder on one disk. Besides files, folders and globs
(`recognize.images.expand_inputs`), an input may be:

- a URL that fsspec can open (`http(s)://`, `s3://`, `gs://`, `az://`, ... with the matching fsspec
  package installed: s3fs, gcsfs, adlfs); every Ray worker opens it itself, so no shared filesystem
  is needed;
- a list file (`.txt`, `.lst`, `.list`): one path or URL per line, `#` comments and blank lines
  skipped, relative paths taken from the list file's folder;
- a manifest (`.jsonl`, `.ndjson`, `.parquet`): one row per image with a `path`, `url` or `source`
  column and optionally `name` (the output name; otherwise derived from the path as for files).

A URL's identity for resume (`url_identity`) is its size plus the ETag or modification time the
server reports, so no image is downloaded twice just to be skipped.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recognize.errors import InputError, first_line

LIST_SUFFIXES = (".txt", ".lst", ".list")
MANIFEST_SUFFIXES = (".jsonl", ".ndjson", ".parquet")
_SOURCE_COLUMNS = ("path", "url", "source")


def is_url(text: str) -> bool:
    """`scheme://...` other than `file://` (which is a local path)."""
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isascii() and scheme.replace("+", "").isalnum() and scheme.lower() != "file"


def local_path(text: str) -> str:
    """`file:///a/b.jpg` -> `/a/b.jpg` (fsspec's local scheme is a plain path to us); anything else as is."""
    if text.lower().startswith("file://"):
        from urllib.parse import unquote

        return unquote(text[len("file://"):])
    return text


def url_name(url: str) -> tuple[str, ...]:
    """The output-name parts of a URL: its host and path (`example.com/a/b.jpg`), no query."""
    _, _, rest = url.partition("://")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    return tuple(part for part in rest.split("/") if part) or ("image",)


def read_url(url: str) -> bytes:
    """The bytes at `url`, or an `OSError` with a one-line reason (what the image reader expects)."""
    try:
        import fsspec

        with fsspec.open(url, "rb") as handle:
            return handle.read()
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    except ImportError as exc:  # the scheme's fsspec package is missing (s3fs, gcsfs, ...)
        raise OSError(f"no reader for this URL scheme ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - client libraries raise their own types (aiohttp, botocore)
        raise OSError(f"cannot read ({type(exc).__name__}: {exc})") from None


def open_url(url: str) -> io.BytesIO:
    return io.BytesIO(read_url(url))


def url_identity(url: str) -> dict[str, Any]:
    """What a finished result records about a URL source (no download)."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
    except Exception:  # noqa: BLE001 - a server that answers no HEAD: identity by URL only
        info = {}
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    return {"source": url, "size": info.get("size"), "etag": None if tag is None else str(tag)}


def same_url(record: dict[str, Any], url: str) -> bool:
    if record.get("source") != url:
        return False
    now = url_identity(url)
    return now["size"] == record.get("size") and now["etag"] == record.get("etag")


def is_list_file(path: Path) -> bool:
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file()


def read_list_file(path: Path) -> list[str]:
    """The entries of a list file: URLs as they are, relative paths from the list file's folder."""
    return list(iter_list_file(path))


def iter_list_file(path: Path) -> Iterator[str]:
    """`read_list_file` one line at a time: a list of 14 million paths is never held in memory."""
    count = 0
    try:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                count += 1
                yield line if is_url(line) or Path(line).is_absolute() else str(path.parent / line)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the list file ({exc})") from None
    if not count:
        raise InputError(f"{path}: the list file names no image (one path or URL per line)")


def read_manifest(path: Path) -> list[tuple[str, str | None]]:
    """(source, name or None) per row of a JSONL or Parquet manifest."""
    return list(iter_manifest(path))


def iter_manifest(path: Path) -> Iterator[tuple[str, str | None]]:
    """`read_manifest` row by row (Parquet: one record batch at a time), so memory does not grow with
    the manifest."""
    count = 0
    for number, row in enumerate(_manifest_rows(path), 1):
        column = next((c for c in _SOURCE_COLUMNS if isinstance(row.get(c), str) and row[c]), None)
        if column is None:
            raise InputError(f"{path}: row {number} has no {', '.join(_SOURCE_COLUMNS)} column naming the image")
        source = row[column]
        if not is_url(source) and not Path(source).is_absolute():
            source = str(path.parent / source)
        name = row.get("name")
        count += 1
        yield source, name if isinstance(name, str) and name else None
    if not count:
        raise InputError(f"{path}: the manifest has no rows")


def _manifest_rows(path: Path) -> Iterator[dict[str, Any]]:
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
                yield from batch.to_pylist()
            return
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise ValueError(f"line {number} is not an object")
                    yield row
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the manifest ({first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow's ArrowInvalid for a file that is not Parquet
        raise InputError(f"{path}: cannot read the manifest ({type(exc).__name__}: {exc})") from None
