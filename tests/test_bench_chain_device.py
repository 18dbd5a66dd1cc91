"""`benchmarks/bench_chain_device.py`: the whole chain through `recognize run` on one device, exact and bf16
(run on the GPU machine for the GPU table; here its quick mode on the CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))


def test_the_quick_chain_runs_exact_and_bf16_and_compares_them(tmp_path):
    if not (REFERENCE / "fixtures" / "ram_plus" / "checkpoint.pth").is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    env = {**os.environ, "RECOGNIZE_BENCH_CACHE": str(tmp_path / "cache"), "RECOGNIZE_REFERENCE": str(REFERENCE)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_chain_device.py"), str(tmp_path / "out"),
                           "--quick", "--device", "cpu", "--photos", "2", "--batch-size", "1",
                           "--runs", "exact,bf16,exact_background_write,exact_inline_write,exact_decoders"],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "chain_device.json").read_text())
    assert list(report["runs"]) == ["exact", "bf16", "exact_background_write", "exact_inline_write", "exact_decoders"]
    for name, run in report["runs"].items():
        assert run["counts"]["processed"] == 2 and run["counts"]["failed"] == 0, name
        assert set(run["stage_seconds"]) == {"ram_plus", "grounding_dino", "sam"}, name
        assert run["wall"]["write"] > 0 and run["cold_start"] > 0, name
    assert report["runs"]["bf16"]["fast_modes"]["sam"] == {"dtype": "bfloat16"}
    # the environment chose the writing mode: only the background writer reports overlapped writing
    assert "write" in report["runs"]["exact_background_write"]["overlapped"]
    assert "write" not in report["runs"]["exact_inline_write"]["overlapped"]
    assert "sam" not in report["runs"]["exact"]["fast_modes"]
    overall = report["compare_exact_bf16"]["json"]["overall"]
    assert overall["images"] == 2 and 0 <= overall["tag_jaccard"] <= 1


def test_the_quick_tagger_alone_runs_with_one_and_several_decoding_threads(tmp_path):
    if not (REFERENCE / "fixtures" / "ram_plus" / "checkpoint.pth").is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    # on the CPU `auto` gives one thread: `exact` takes the two threads asked for here, `exact_one_decoder` one
    env = {**os.environ, "RECOGNIZE_BENCH_CACHE": str(tmp_path / "cache"), "RECOGNIZE_REFERENCE": str(REFERENCE),
           "RECOGNIZE_PREFETCH_WORKERS": "2"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_chain_device.py"), str(tmp_path / "out"),
                           "--quick", "--device", "cpu", "--chain", "tag", "--photos", "3", "--batch-size", "2",
                           "--runs", "exact_one_decoder,exact"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "chain_device_tag.json").read_text())
    assert report["chain"] == "tag" and list(report["runs"]) == ["exact_one_decoder", "exact"]
    for name, run in report["runs"].items():
        assert run["counts"]["processed"] == 3 and run["counts"]["failed"] == 0, name
        assert set(run["stage_seconds"]) == {"ram_plus"}, name  # the tagger alone
        assert run["tags_per_img"] > 0 and run["annotated_images"] == 0, name  # JSON only
    assert not (tmp_path / "out" / "chain_device.json").exists()


def test_the_quick_chain_runs_beside_the_demo_on_the_same_device(tmp_path):
    """`--runs demo,...`: the Grounded-SAM demo per photo in the official venv (its Grounding DINO the official
    code), our chain on the same official Grounding DINO file, and our photos per hour over the demo's."""
    if not (REFERENCE / "fixtures" / "ram_plus" / "checkpoint.pth").is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    env = {**os.environ, "RECOGNIZE_BENCH_CACHE": str(tmp_path / "cache"), "RECOGNIZE_REFERENCE": str(REFERENCE)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_chain_device.py"), str(tmp_path / "out"),
                           "--quick", "--device", "cpu", "--photos", "2", "--batch-size", "1", "--runs", "demo,exact"],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "chain_device.json").read_text())
    demo, exact = report["runs"]["demo"], report["runs"]["exact"]
    assert demo["rc"] == 0 and demo["photos"] == 2 and len(demo["runs"]) == 2
    assert demo["runs"][0]["files"] == ["automatic_label_output.jpg", "label.json", "mask.jpg", "raw_image.jpg"]
    assert demo["masks_per_img"] == demo["regions_per_img"] > 0 and demo["cold_start"] > 0
    assert exact["counts"]["processed"] == 2 and exact["regions_per_img"] == demo["regions_per_img"]
    assert report["against_demo"] == pytest.approx({"exact": demo["s_per_photo"] / exact["s_per_photo"]})
    # both sides loaded the Grounding DINO file the official code wrote, and the demo ran where asked
    assert exact["grounding_dino_checkpoint"] == demo["grounding_dino_checkpoint"]
    assert "grounding_dino_official_random" in demo["grounding_dino_checkpoint"]
    assert {run["device"] for run in demo["runs"]} == {"cpu"} and demo["sam_model"] == "vit_h"


def test_the_demo_is_refused_for_the_tagger_alone(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_chain_device.py"), str(tmp_path / "out"),
                           "--quick", "--chain", "tag", "--runs", "demo"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "the demo is the full chain" in proc.stderr


def test_the_quick_data_engine_runs_its_confirm_and_outlier_passes_on_shrunk_photos(tmp_path):
    if not (REFERENCE / "fixtures" / "ram_plus" / "checkpoint.pth").is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    env = {**os.environ, "RECOGNIZE_BENCH_CACHE": str(tmp_path / "cache"), "RECOGNIZE_REFERENCE": str(REFERENCE)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_chain_device.py"), str(tmp_path / "out"),
                           "--quick", "--device", "cpu", "--chain", "data_engine", "--photos", "3", "--batch-size", "2",
                           "--max-side", "200", "--runs", "exact"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "chain_device_data_engine.json").read_text())
    run = report["runs"]["exact"]
    assert report["chain"] == "data_engine" and report["max_side"] == 200
    assert len(report["photo_sizes"]) == 3 and max(max(size) for size in report["photo_sizes"]) == 200
    assert run["counts"]["processed"] == 3 and run["counts"]["failed"] == 0
    assert set(run["stage_seconds"]) == {"ram_plus", "grounding_dino", "region_confirm", "region_outliers"}
    assert run["regions_per_img"] > 0 and run["annotated_images"] == 0
