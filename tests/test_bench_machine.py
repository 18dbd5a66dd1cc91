"""`benchmarks/bench_machine.py`: the CPU model and flags every benchmark records (not `platform.processor()`,
which is empty on Linux), torch's threads without importing torch, the load average."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_machine


def test_machine_reads_the_model_and_compute_flags_from_cpuinfo():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
    info = bench_machine.machine()
    if model:
        assert info["cpu"] == model
    assert info["cpu_flags"] == [f for f in bench_machine.COMPUTE_FLAGS if f in flags]
    assert info["cores"] >= 1 and len(info["load_average"]) == 3
    line = bench_machine.machine_line(info)
    assert info["cpu"] in line and all(flag in line for flag in info["cpu_flags"])
    json.dumps(info)  # goes into the results' JSON as it is


def test_the_compute_flags_hold_every_flag_a_fast_mode_is_judged_by():
    from recognize.fast_modes import CPU_FLAGS_FOR

    needed = {flag for flags in CPU_FLAGS_FOR.values() for flag in flags}
    assert needed <= set(bench_machine.COMPUTE_FLAGS)


def test_torch_threads_only_where_torch_is_imported():
    """A startup benchmark's own process must not import torch (it would warm what its children time)."""
    code = ("import sys, json; sys.path.insert(0, 'benchmarks'); import bench_machine; "
            "before = bench_machine.machine(); imported = 'torch' in sys.modules; import torch; "
            "torch.set_num_threads(1); after = bench_machine.machine(); "
            "print(json.dumps([before['torch_threads'], imported, after['torch_threads'], after['torch']]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    before, imported, after, version = json.loads(out.splitlines()[-1])
    assert before is None and not imported
    assert after == 1 and version
