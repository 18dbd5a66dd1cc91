"""Finding a TrueType font that can draw a given text (Latin, or Chinese tag names).

PIL's built-in font has no CJK glyphs and OpenCV's Hershey fonts are ASCII only, so Chinese
labels need a real font file. We look in this order: an explicit path, `$RECOGNIZE_FONT`,
fontconfig (`fc-list :lang=zh`), then well-known install locations. A font counts only if
its character map covers the text (checked with fontTools when available), so a caller can
fall back to English instead of drawing empty boxes.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

_CJK_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Light.ttc",
    "/Library/Fonts/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)

_LATIN_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Helvetica.ttc",
    "C:/Windows/Fonts/arial.ttf",
)


@functools.lru_cache(maxsize=8)
def _fc_list(pattern: str) -> list[str]:
    """Font files fontconfig knows for `pattern` (empty when fontconfig is not installed)."""
    exe = shutil.which("fc-list")
    if exe is None:
        return []
    try:
        result = subprocess.run([exe, pattern, "file"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    files = [line.split(":")[0].strip() for line in result.stdout.splitlines() if line.strip()]
    return sorted(f for f in files if f.lower().endswith((".ttf", ".ttc", ".otf")))


def _matplotlib_font() -> list[str]:
    try:
        import matplotlib
    except ImportError:
        return []
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return [str(path)]


@functools.lru_cache(maxsize=64)
def _codepoints(path: str) -> frozenset[int] | None:
    """The code points a font file maps, or None when that cannot be read (then trust the font)."""
    try:
        from fontTools.ttLib import TTFont
    except ImportError:
        return None
    try:
        font = TTFont(path, fontNumber=0, lazy=True)
        cmap = font.getBestCmap() or {}
        font.close()
    except Exception:  # noqa: BLE001 - an unreadable font is simply not a candidate
        return frozenset()
    return frozenset(cmap)


def covers(path: str | os.PathLike[str], text: str) -> bool:
    """True when the font at `path` has a glyph for every visible character of `text`."""
    points = _codepoints(str(path))
    if points is None:
        return Path(path).is_file()
    return all(ord(ch) in points for ch in text if not ch.isspace())


def candidates(cjk: bool) -> list[str]:
    """Font files worth trying, best first (those that do not exist are left out)."""
    found: list[str] = []
    env = os.environ.get("RECOGNIZE_FONT")
    if env:
        found.append(env)
    if cjk:
        found += _fc_list(":lang=zh") + list(_CJK_CANDIDATES)
    else:
        found += list(_LATIN_CANDIDATES) + _matplotlib_font() + _fc_list(":lang=en")
    unique = list(dict.fromkeys(found))
    return [f for f in unique if Path(f).is_file()]


def find_font(text: str, explicit: str | None = None) -> str | None:
    """A font file that can draw `text`, or None. `explicit` (a user's choice) is tried first."""
    cjk = any(ord(ch) > 0x2E7F for ch in text)
    options = ([explicit] if explicit else []) + candidates(cjk)
    for path in options:
        if Path(path).is_file() and covers(path, text):
            return path
    if explicit:
        log.warning("font %s cannot draw %r; looking for another", explicit, text[:20])
    return None
