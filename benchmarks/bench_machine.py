"""The machine a benchmark ran on, recorded with every result (the developers' guide asks for the CPU
model and flags with every benchmark: ratios are only comparable on the same kernels).

`machine()` is the record for a result's JSON, `machine_line()` the same on one line for a printed
table. Standard library only, and torch is not imported here: a startup or memory benchmark that
never imports torch in its own process reports `torch_threads: null` rather than pay for (and
warm the page cache with) the import its children time. `platform.processor()` is empty on Linux,
so the model name comes from /proc/cpuinfo.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

__all__ = ["COMPUTE_FLAGS", "cpu_model_and_flags", "machine", "machine_line"]

#: the /proc/cpuinfo flags that decide which kernels run: fp32 FMA widths, bf16, fp16 and int8 paths
#: (every flag `recognize.fast_modes.CPU_FLAGS_FOR` judges a fast mode by is here)
COMPUTE_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                 "amx_tile", "amx_bf16", "amx_fp16", "amx_int8")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; elsewhere what `platform` knows."""
    model, flags = "", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "flags" and not flags:
                flags = value.split()
            if model and flags:
                break
    except OSError:
        pass
    return model or platform.processor() or platform.machine() or "unknown CPU", flags


def machine() -> dict[str, Any]:
    """CPU model, its compute flags, logical CPUs, torch's threads (None when this process has not
    imported torch), `OMP_NUM_THREADS`, the load average now, Python and torch versions."""
    model, flags = cpu_model_and_flags()
    torch = sys.modules.get("torch")
    try:
        load = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": model, "cpu_flags": [f for f in COMPUTE_FLAGS if f in flags], "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads() if torch is not None else None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average": load,
            "python": platform.python_version(), "torch": getattr(torch, "__version__", None)}


def machine_line(info: dict[str, Any] | None = None) -> str:
    """`machine()` (or a record it gave) as one line."""
    info = machine() if info is None else info
    threads = "torch not imported" if info["torch_threads"] is None else f"{info['torch_threads']} torch threads"
    load = "?" if info["load_average"] is None else "/".join(f"{v:.1f}" for v in info["load_average"])
    torch = f"torch {info['torch']}, " if info["torch"] else ""
    omp = f" (OMP_NUM_THREADS={info['omp_num_threads']})" if info["omp_num_threads"] else ""
    return (f"{info['cpu']}, flags {' '.join(info['cpu_flags']) or 'none of ' + ' '.join(COMPUTE_FLAGS)}, "
            f"{info['cores']} logical CPUs; {torch}{threads}{omp}; load {load}; Python {info['python']}")
