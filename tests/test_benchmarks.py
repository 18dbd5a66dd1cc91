"""`benchmarks/run.py --quick` runs end to end and writes a sane report (the full run is documented in
`benchmarks/README.md`; it is not a test)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("RECOGNIZE_REFERENCE", REPO.parent / "shared" / "reference"))
STAGES = ["ram", "ram_plus", "tag2text", "grounding_dino", "sam"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not (REFERENCE / "fixtures" / "ram" / "checkpoint.pth").is_file():
        pytest.skip(f"reference fixtures not found under {REFERENCE}")
    pytest.importorskip("ray")
    tmp = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "RECOGNIZE_BENCH_CACHE": str(tmp / "cache"), "RECOGNIZE_REFERENCE": str(REFERENCE)}
    # no timeout of its own: a loaded machine may take minutes; pytest-timeout (pyproject) catches a hang
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--out", str(tmp / "results")],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text()), (tmp / "results.md").read_text()


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_stage_has_timings_flops_and_a_baseline(quick_run):
    results, _ = quick_run
    assert results["errors"] == []
    # the baseline's Grounding DINO is the official code (its own venv, built on first use: minutes)
    assert results["settings"]["grounding_dino_baseline"] == "official rf-groundingdino"
    assert positive(results["matmul"]["gflops"])
    assert positive(results["matmul"]["gflops_onednn"])  # this torch build has the op (checked on CPU)
    assert list(results["stages"]) == STAGES
    for name, entry in results["stages"].items():
        ours, base = entry["ours"], entry["baseline"]
        for key in ("load_s", "flops", "s_per_img_b1", "s_per_img_b4", "peak_rss_mb"):
            assert positive(ours[key]), (name, key, ours[key])
        for key in ("load_s", "infer_s_per_img", "s_per_img", "peak_rss_mb"):
            assert positive(base[key]), (name, key, base[key])
        # the baseline loads the model for every image: its per-image time includes a load
        assert base["s_per_img"] >= base["load_s"]
        assert base["peak_rss_mb"] >= base["rss_imports_mb"] and ours["peak_rss_mb"] >= ours["rss_imports_mb"]
        assert positive(base["infer_ratio_median"])
        # the GEMM rates its "% of" columns divide by, probed in its own process before and after its timing
        assert len(ours["matmul_probes"]) == 2
        assert all(positive(p["gflops"]) and positive(p["gflops_onednn"]) for p in ours["matmul_probes"])
    assert positive(results["matmul_end"]["gflops"])
    # tiny models, but not nothing: SAM's mask decoder alone is gigaflops per image
    assert results["stages"]["sam"]["ours"]["flops"] > results["stages"]["ram"]["ours"]["flops"]


def test_chain_runs_recognize_and_the_demo_with_the_same_work(quick_run):
    results, _ = quick_run
    chain = results["recipe"]
    boxes = results["settings"]["boxes"]
    ref, ours, fast = chain["reference"], chain["ours"], chain["fast"]
    assert ref["photos"] == ours["photos"] == fast["photos"] == results["settings"]["images"]
    for run in (ref, ours, fast):
        assert run["tags_per_img"] == len(results["settings"]["tags"])
        assert run["regions_per_img"] == run["masks_per_img"] == boxes
        for key in ("s_per_photo", "cold_start", "peak_rss_mb"):
            assert positive(run[key]), (key, run[key])
        assert run["cold_start"] < run["s_per_photo"] * run["photos"]
    # the reference is the demo's per-photo process: its figure, mask image and JSON, timed part by part
    assert ref["files"] == ["automatic_label_output.jpg", "label.json", "mask.jpg", "raw_image.jpg"]
    for part in ("startup", "load_grounding_dino", "load_ram", "load_sam", "ram", "grounding_dino", "sam", "draw_save"):
        assert positive(ref["parts"][part]), part
    # ours: one `recognize run` over the folder writing JSON + annotated images; its summary accounts for the time
    for run in (ours, fast):
        assert run["annotated_images"] == run["photos"]
        assert set(run["stage_seconds"]) == {"ram_plus", "grounding_dino", "sam"}
        assert run["wall"]["load"] > 0 and run["cold_start"] >= run["wall"]["startup"] + run["wall"]["load"]
    assert ours["fast_modes"] == {"grounding_dino": {"max_regions": boxes}}  # the equal-work cap, nothing else
    mode = chain["fast_mode"]
    assert fast["fast_modes"].get("sam", {}) == mode["sam"] and fast["fast_modes"]["grounding_dino"] == {
        **mode["grounding_dino"], "max_regions": boxes}
    assert all(positive(chain["flops"][name]) for name in ("ram_plus", "grounding_dino", "sam"))
    assert positive(results["matmul"]["gflops_bf16"])
    # the fast mode's fidelity: `recognize eval compare` of the two output folders, on random weights
    fidelity = chain["fidelity"]
    assert fidelity["weights"] == "random" and (fidelity["a"], fidelity["b"]) == ("exact", "fast")
    overall = fidelity["overall"]
    assert overall["images"] == ours["photos"]
    assert overall["regions_a"] == overall["regions_b"] == boxes * ours["photos"]
    assert 0.0 <= overall["tag_jaccard"] <= 1.0 and overall["matched"] <= overall["regions_a"]


def test_engines_are_compared(quick_run):
    results, _ = quick_run
    engines = results["engines"]
    for key, workers in (("local", 1), ("ray_1", 1), ("ray_2", 2)):
        assert engines[key]["workers"] == workers
        assert engines[key]["images"] == results["settings"]["engine_images"]
        assert positive(engines[key]["images_per_s"])


def test_markdown_report_has_the_tables(quick_run):
    _, markdown = quick_run
    assert "GFLOP/s" in markdown and "fp32 matmul" in markdown
    for name in STAGES:
        assert f"| {name} | tiny" in markdown
    assert "| recognize run (exact), one process for the folder |" in markdown
    assert "| reference: the demo, one process per photo |" in markdown
    assert "| recognize run, fast mode: " in markdown and "FLOP limit: " in markdown and "bf16 matmul" in markdown
    assert "| ray | 2 |" in markdown
    assert "Ratio (ours photos/hour ÷ reference photos/hour)" in markdown
    assert "| (wall − I/O) ÷ limit |" in markdown and "plus image I/O: (s/photo − I/O) ÷ limit" in markdown
    assert "| fidelity vs exact (random weights) |" in markdown and "**on random weights**" in markdown
    assert "Equal work: every row tagged, localized and segmented the same per photo" in markdown
    assert "probed in the stage's own process just before and just after its timed passes" in markdown
    assert "The same probes at the run's end" in markdown


@pytest.mark.slow
def test_plugin_stages_are_measured_on_request(tmp_path):
    """`--stages sam2,owlv2,tiled`: the plugin distributions' stages, each against its own baseline."""
    for module in ("recognize_sam2", "recognize_owlv2", "recognize_tiles"):
        pytest.importorskip(module)
    if not (REFERENCE / "data" / "images").is_dir():
        pytest.skip(f"reference photos not found under {REFERENCE}")
    env = {**os.environ, "RECOGNIZE_BENCH_CACHE": str(tmp_path / "cache"), "RECOGNIZE_REFERENCE": str(REFERENCE)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--stages", "sam2,owlv2,tiled",
                           "--skip", "recipe,engines", "--out", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["errors"] == [] and list(results["stages"]) == ["sam2", "owlv2", "tiled"]
    assert not (tmp_path / "results.partial.json").exists()  # written after each stage, removed at the end
    for name, entry in results["stages"].items():
        ours, base = entry["ours"], entry["baseline"]
        for key in ("load_s", "flops", "s_per_img_b1", "peak_rss_mb"):
            assert positive(ours[key]), (name, key, ours[key])
        assert positive(base["s_per_img"]) and positive(base["peak_rss_mb"])
    # tiling runs the localizer on every slice and on the whole image: more work than the whole image alone
    assert results["stages"]["tiled"]["ours"]["flops"] > results["stages"]["owlv2"]["ours"]["flops"]
