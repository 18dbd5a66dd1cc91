"""A library release checked when a stage loads, for stages whose results depend on it.

Why: pip enforces a plugin's floor when it installs, but not an install made with `--no-deps`, nor an
environment changed later; and a library release that computes differently gives wrong results, not an
error (transformers 5.0-5.22's Grounding DINO numbers a caption's tokens unlike the official code). So
such a stage checks in `model_files`, which the engines read before any weight is fetched: one line,
nothing downloaded, nothing written.
"""

from __future__ import annotations

from recognize.errors import RecognizeError

__all__ = ["require"]


def require(distribution: str, minimum: str, who: str, why: str, installed: str | None = None) -> None:
    """A one-line `RecognizeError` unless `distribution` (or the version `installed`) is at least
    `minimum`; `why` says what goes wrong below it. Pre-releases of `minimum` count as below it (a
    5.23 dev build may predate the fix 5.23 shipped); a version that does not parse passes, and so does a
    module that imports but has no package metadata to read."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import InvalidVersion, Version

    if installed is None:
        try:
            installed = version(distribution)
        except PackageNotFoundError:
            from importlib.util import find_spec

            if find_spec(distribution.replace("-", "_")) is not None:  # importable, without metadata (a source
                return  # tree on PYTHONPATH, a zipapp): nothing to read, let it run
            raise RecognizeError(f"{who} needs {distribution} >= {minimum}, which is not installed: "
                                 f"pip install '{distribution}>={minimum}'") from None
    try:
        below = Version(installed) < Version(minimum)
    except InvalidVersion:
        return
    if below:
        raise RecognizeError(f"{who} needs {distribution} >= {minimum} (installed: {installed}): {why}; "
                             f"pip install -U '{distribution}>={minimum}'")
