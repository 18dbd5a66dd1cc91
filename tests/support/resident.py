"""How much of a file this process holds resident: what `recognize.resident_weights` tests look at."""

from __future__ import annotations

from pathlib import Path


def resident_kib(path: str | Path) -> int:
    """Rss of this process's mappings of `path`, KiB, as /proc/self/smaps reports it."""
    wanted, total, inside = str(Path(path).resolve()), 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split(None, 5)
        if fields and not fields[0].endswith(":"):
            inside = len(fields) == 6 and fields[5].strip() == wanted
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total
