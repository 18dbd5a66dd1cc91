"""Reading a weights file safely, and saying what a bad one looks like.

Every loader in the project (tagger checkpoints, CLIP, Grounding DINO, SAM) reads tensors through
`read_weights`: `torch.load(weights_only=True)` (memory-mapped where the file allows) or safetensors.
When that fails, torch's own message is no help to the user: a short text file gives `KeyError: 101`,
and a file with pickled objects comes with advice to retry with `weights_only=False`, i.e. to run
whatever code the file holds. Instead the one-line `ModelFileError` says what the file *is*: an HTML
page (a login or error page saved by a browser or `wget`), a Git LFS pointer (a clone without
`git lfs pull`), a truncated zip (an interrupted download), a text file, an empty file.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recognize.errors import ModelFileError

_SNIFF = 512


def describe_bad_checkpoint(path: str | os.PathLike[str]) -> str:
    """What the file at `path` looks like, as a phrase: 'an HTML page (...)', 'a Git LFS pointer ...'."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if size == 0:
        return "an empty file (0 bytes)"
    lowered = head.lstrip().lower()
    if head.startswith(b"version https://git-lfs"):
        return ("a Git LFS pointer, not the file itself (run `git lfs pull` in its repository, "
                "or download the real file)")
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in lowered:
        return "an HTML page, not weights (an error or login page saved instead of the file?)"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return f"a truncated or damaged zip archive ({size} bytes; an interrupted download?)"
        if bad is not None:
            return f"a damaged zip archive ({bad!r} fails its checksum)"
        return f"a zip archive ({size} bytes) that is not a torch checkpoint"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return f"a legacy torch/pickle file that is truncated or damaged ({size} bytes)"
    if _looks_like_safetensors(head, size):
        return f"a damaged or truncated safetensors file ({size} bytes)"
    text = _as_text(head)
    if text is not None:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        first = first if len(first) <= 60 else first[:57] + "..."
        kind = "a JSON file" if first.startswith(("{", "[")) else "a text file"
        return f"{kind} ({size} bytes) starting {first!r}, not weights"
    return f"binary data of an unknown kind ({size} bytes), not a torch or safetensors checkpoint"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < length < max(size, 1) * 16


def _as_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the sniff boundary
            return None
        text = head[: exc.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return text if text and printable >= 0.95 * len(text) else None


def _refused_object(exc: BaseException) -> str | None:
    """The Python object torch refused to unpickle ('argparse.Namespace'), or None when the
    failure was not about an object (the file is no pickle at all). torch's advice to retry with
    `weights_only=False` is never passed on."""
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if match:
        return match.group(1)
    if re.search(r"Unsupported (class|global)|not an allowed global|REDUCE|BUILD", str(exc)):
        return "an object"
    return None


def read_weights(path: str | os.PathLike[str], what: str = "checkpoint", mmap: bool = True) -> Any:
    """The object stored in a weights file (usually a dict of tensors); only tensors can come out.

    `.safetensors` files (or files that look like one) go through safetensors; everything else
    through `torch.load(weights_only=True)`. Raises `ModelFileError`, one line.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such {what} file")
    if not path.is_file():
        raise ModelFileError(f"{path}: is {'a folder' if path.is_dir() else 'not a regular file'}, not a {what} file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, path.stat().st_size):
        return _read_safetensors(path, what)
    import torch

    try:
        try:
            mapped = mmap and zipfile.is_zipfile(path)
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mapped)
            if mapped:  # its pages may leave RSS between a chain's stages (recognize.resident_weights)
                from recognize.resident_weights import note_mapped

                note_mapped(path, loaded)
            return loaded
        except RuntimeError as exc:  # some archives cannot be memory-mapped
            if not mmap or "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_object(exc)
        if refused is not None:
            raise ModelFileError(
                f"{path}: refused: the {what} holds Python objects other than tensors ({refused}), which "
                "could run code when loaded; use the official weights file"
            ) from None
        raise ModelFileError(f"{path}: not a readable {what}: {describe_bad_checkpoint(path)}") from None
    except MemoryError:
        raise ModelFileError(f"{path}: the {what} does not fit in memory") from None
    except Exception:  # noqa: BLE001 - torch raises anything (KeyError: 101 for a text file)
        raise ModelFileError(f"{path}: not a readable {what}: {describe_bad_checkpoint(path)}") from None


def _read_safetensors(path: Path, what: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except MemoryError:
        raise ModelFileError(f"{path}: the {what} does not fit in memory") from None
    except Exception:  # noqa: BLE001 - safetensors raises its own SafetensorError and others
        raise ModelFileError(f"{path}: not a readable {what}: {describe_bad_checkpoint(path)}") from None


def strict_mismatch(own: Mapping[str, Any], state: Mapping[str, Any], limit: int = 3) -> list[str]:
    """Why `state` cannot be loaded strictly into a module whose state dict is `own`: the missing,
    unexpected and reshaped keys, counted and a few named (empty when it fits). Why not let
    `load_state_dict` say it: its message is one line per key, thousands for the wrong model."""

    def listing(keys: list[str]) -> str:
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    reshaped = sorted(k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({listing(unexpected)})")
    if reshaped:
        problems.append(f"{len(reshaped)} keys of another shape ({listing(reshaped)})")
    return problems


def load_strictly(module: Any, state: Mapping[str, Any], path: str | os.PathLike[str], expected: str,
                  looks_like: str | None = None) -> Any:
    """Load `state` into `module` with no missing, unexpected or reshaped key, else one
    `ModelFileError` naming the file, what it should have been (`expected`) and, when known, what it
    looks like instead (`looks_like`, e.g. "a SAM vit_b"). A module built with its parameters on the
    meta device (`recognize.meta_init.parameters_on_meta`) gets `state`'s tensors assigned. Returns `module`."""
    from recognize.meta_init import assign_state

    problems = strict_mismatch(module.state_dict(), state)
    if problems:
        hint = f"; it looks like {looks_like} checkpoint" if looks_like else ""
        raise ModelFileError(f"{path} does not fit {expected}: {'; '.join(problems)}{hint}")
    assign_state(module, state)
    return module
