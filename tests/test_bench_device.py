"""`benchmarks/run.py --device`: the stage table on a GPU. Where there is none (here), the options and the
report are checked, and asking for CUDA fails in one line before anything is measured; the GPU run itself
is checked where torch sees one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_report  # noqa: E402
import run as bench_run  # noqa: E402


def test_a_gpu_run_measures_the_stages_only_against_our_grounding_dino_classes_unless_asked(capsys):
    args = bench_run.parse_args(["--device", "cuda"])
    assert args.device == "cuda" and args.parts == ["stages"] and args.gdino_baseline == "ours"
    assert "the stage table only" in capsys.readouterr().err
    cpu = bench_run.parse_args([])
    assert cpu.device == "cpu" and cpu.parts == ["stages", "recipe", "engines"] and cpu.gdino_baseline == "official"
    assert bench_run.parse_args(["--gdino-baseline", "ours"]).gdino_baseline == "ours"
    # the official code on a GPU, asked for (its venv from the package index or RECOGNIZE_ORACLE_WHEELS)
    assert bench_run.parse_args(["--device", "cuda", "--gdino-baseline", "official"]).gdino_baseline == "official"


@pytest.mark.parametrize("argv, says", [
    (["--device", "cuda:1"], "invalid choice"),  # another GPU: CUDA_VISIBLE_DEVICES
    (["--device", "tpu"], "invalid choice"),
])
def test_a_device_it_cannot_measure_is_refused(capsys, argv, says):
    with pytest.raises(SystemExit) as exit_info:
        bench_run.parse_args(argv)
    assert exit_info.value.code == 2 and says in capsys.readouterr().err


def _results(ours: dict, baseline: dict, matmul: dict) -> dict:
    settings = {"quick": True, "images": 1, "repeats": 1, "tags": ["a"], "boxes": 1, "stages": ["sam"], "parts": ["stages"]}
    return {"date": "d", "command": "c", "settings": settings,
            "machine": {"cpu": "x"}, "matmul": matmul,
            "stages": {"sam": {"model": "vit_h", "ours": {"flops": 2e12, "s_per_img_b1": 0.1, "s_per_img_b4": 0.05,
                                                          "peak_rss_mb": 900, **ours},
                               "baseline": {"s_per_img": 0.5, "peak_rss_mb": 800, **baseline}}}}


def test_the_report_adds_the_gpus_name_and_memory_columns_only_for_a_gpu_run():
    gpu = bench_report.render(_results({"peak_device_mb": 7000}, {"peak_device_mb": 9000},
                                       {"gflops": 50000, "device": "cuda", "device_name": "NVIDIA H200",
                                        "float32_matmul_precision": "highest"}))
    header = next(line for line in gpu.splitlines() if line.startswith("| stage |"))
    row = next(line for line in gpu.splitlines() if line.startswith("| sam |"))
    assert header.endswith("| peak GPU MiB b4 | baseline peak GPU MiB |") and row.endswith("| 7000 | 9000 |")
    assert "oneDNN" not in header  # a CPU GEMM: no column on a GPU run
    assert len(header.split("|")) == len(row.split("|"))
    assert "- GPU: NVIDIA H200 (`--device cuda`" in gpu and "without TF32" in gpu
    assert "| 40000 | 80% |" in row  # 2 TFLOP in 0.05 s against the GPU's 50 TFLOP/s probe
    cpu = bench_report.render(_results({}, {}, {"gflops": 100}))
    assert "peak GPU" not in cpu and "- GPU:" not in cpu and "| % of oneDNN matmul |" in cpu
    # the CPU's GEMM choice and the oneDNN probe say nothing about a GPU run
    both = {"gemm": "oneDNN"}, {"gflops": 100, "gflops_onednn": 120}
    cpu_run = _results({}, {}, both[1]) | {"matmul_end": both[1]}
    cpu_run["machine"] |= both[0]
    gpu_run = _results({}, {}, {"gflops": 5e4, "device_name": "H"}) | {"matmul_end": {"gflops": 5e4}}
    gpu_run["machine"] |= both[0]
    assert "exact CPU paths' GEMM in this run: oneDNN" in bench_report.render(cpu_run)
    assert "oneDNN 120" in bench_report.render(cpu_run)
    assert "GEMM in this run" not in bench_report.render(gpu_run) and "oneDNN –" not in bench_report.render(gpu_run)


@pytest.mark.subprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_asking_for_cuda_without_one_fails_in_one_line_before_any_measurement(tmp_path):
    env = {**os.environ, "RECOGNIZE_BENCH_CACHE": str(tmp_path / "cache"), "RECOGNIZE_REFERENCE": str(REFERENCE)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--device", "cuda",
                           "--stages", "ram", "--out", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no CUDA device" in errors[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "results.json").exists()


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_quick_stage_table_runs_on_the_gpu(tmp_path):
    if not (REFERENCE / "fixtures" / "ram" / "checkpoint.pth").is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    env = {**os.environ, "RECOGNIZE_BENCH_CACHE": str(tmp_path / "cache"), "RECOGNIZE_REFERENCE": str(REFERENCE)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--device", "cuda",
                           "--out", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=780, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == [] and results["settings"]["device"] == "cuda"
    assert results["matmul"]["device_name"] and results["matmul"]["gflops"] > 0
    for name, entry in results["stages"].items():
        assert entry["ours"]["peak_device_mb"] > 0 and entry["baseline"]["peak_device_mb"] > 0, name
        assert entry["ours"]["s_per_img_b1"] > 0 and entry["ours"]["flops"] > 0, name


def test_a_run_keeps_each_finished_stage_in_a_partial_file_until_it_completes(tmp_path):
    """A lent GPU machine goes back at its time limit: the stages measured by then must come back."""
    out = tmp_path / "results"
    results = _results({"peak_device_mb": 7000}, {"peak_device_mb": 9000}, {"gflops": 50000, "device_name": "H"})
    bench_run.write_partial(out, results, ["stage ram: boom"])
    saved = json.loads(bench_run.partial_path(out).read_text())
    assert saved["partial"] is True and saved["errors"] == ["stage ram: boom"] and list(saved["stages"]) == ["sam"]
    assert "partial" not in results and not out.with_suffix(".json").exists()
    assert "| sam |" in bench_report.render(saved)  # a partial run renders as far as it went


def test_re_rendering_writes_the_markdown_beside_the_json_and_refuses_a_wrong_file_in_one_line(tmp_path, capsys):
    """`bench_report.py X.json` (a partial file too): a missing or foreign file is one line, exit code 2, and
    the files after it are still rendered; an existing X.md's hand-written notes survive the re-rendering."""
    run = _results({"peak_device_mb": 7000}, {"peak_device_mb": 9000}, {"gflops": 50000, "device_name": "H"})
    good = tmp_path / "results.partial.json"
    good.write_text(json.dumps(run))
    bench_report.main([str(good)])
    assert "| sam |" in (tmp_path / "results.partial.md").read_text()

    later = tmp_path / "later.json"
    later.write_text(json.dumps(run))
    (tmp_path / "later.md").write_text("stale table\n\n## Notes on this run (by hand)\n\n- kept\n")
    foreign = tmp_path / "other.json"
    foreign.write_text("[]")
    with pytest.raises(SystemExit) as exit_info:
        bench_report.main([str(tmp_path / "missing.json"), str(foreign), str(later)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert not (tmp_path / "other.md").exists()
    rendered = (tmp_path / "later.md").read_text()
    assert "| sam |" in rendered and "stale table" not in rendered
    assert rendered.endswith("## Notes on this run (by hand)\n\n- kept\n")


def test_a_gpu_kit_sends_the_official_grounding_dino_and_the_demo_to_its_device(tmp_path, monkeypatch):
    """No GPU needed: the files that tell the official worker and the demo where to compute."""
    import bench_chain
    import bench_models
    import official_env

    written = []
    monkeypatch.setattr(official_env, "official_python", lambda: Path("official-python"))
    monkeypatch.setattr(bench_models, "run_official_worker",
                        lambda python, command, spec: written.append(spec) or Path(spec["checkpoint"]).write_bytes(b"x"))
    gpu = bench_models.Kit(quick=True, cache=tmp_path, device="cuda")
    cpu = bench_models.Kit(quick=True, cache=tmp_path)
    gpu_spec, cpu_spec = gpu.official_gdino_spec(), cpu.official_gdino_spec()
    assert gpu_spec.name.endswith("_cuda.json") and json.loads(gpu_spec.read_text())["device"] == "cuda"
    assert cpu_spec.name == f"grounding_dino_official_spec_v{bench_models.OFFICIAL_GDINO_VERSION}.json"
    assert "device" not in json.loads(cpu_spec.read_text())  # the file earlier runs cached, unchanged
    # one checkpoint for both, written once, by the official code on the CPU (no device in its spec)
    assert len(written) == 1 and "device" not in written[0]
    assert json.loads(gpu_spec.read_text())["checkpoint"] == json.loads(cpu_spec.read_text())["checkpoint"]
    demo = bench_chain.reference_spec(gpu, "vit_b")
    assert demo["device"] == "cuda" and demo["grounding_dino"]["device"] == "cuda"
    assert demo["sam"]["model"] == "vit_b"


def test_the_header_names_the_code_the_run_measured():
    import re

    revision = bench_run.code_revision()
    if (REPO / ".git").exists():  # a checkout (CI's clone): its commit; elsewhere (an unpacked source tree) None
        assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", revision or "")
    else:
        assert revision is None
    results = _results({}, {}, {"gflops": 100})
    header = next(line for line in bench_report.render(results).splitlines() if line.startswith("Run "))
    assert "` at " not in header  # an older results file, without a revision
    header = next(line for line in bench_report.render({**results, "revision": "abc1234-dirty"}).splitlines()
                  if line.startswith("Run "))
    assert "with `c` at abc1234-dirty (" in header
