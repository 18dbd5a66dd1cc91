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


def mapped_ranges(path: str | Path) -> list[tuple[int, int]]:
    """[start, end) addresses of this process's mappings of `path` (/proc/self/maps)."""
    wanted, found = str(Path(path).resolve()), []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5].strip() == wanted:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end))
    return found


class AnonymousMemory:
    """Private anonymous memory mapped at a wanted address when it is free (elsewhere when not),
    filled with a pattern: what another thread's allocation at a freed model's address looks like."""

    def __init__(self, wanted: int, size: int, fill: int = 0x5A) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        prot, flags = 0x1 | 0x2, 0x02 | 0x20  # PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS
        fixed_noreplace = 0x100000
        address = libc.mmap(wanted, size, prot, flags | fixed_noreplace, -1, 0)
        if address in (None, ctypes.c_void_p(-1).value):  # the address is taken: anywhere else
            address = libc.mmap(None, size, prot, flags, -1, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        self._libc, self.address, self.size, self.fill = libc, address, size, fill
        ctypes.memset(address, fill, size)

    def intact(self) -> bool:
        import ctypes

        return ctypes.string_at(self.address, self.size) == bytes([self.fill]) * self.size

    def close(self) -> None:
        self._libc.munmap(self.address, self.size)
