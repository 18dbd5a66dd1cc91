"""`bench_chain.fast_mode`: which fast mode the chain benchmark runs on a machine, from its measured matmul
rates and its CPU flags (bf16 where a bf16 matmul beats fp32, int8 only with int8 dot products, else the
lighter SAM), and the recipe it gives."""

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_chain import fast_mode, recipe  # noqa: E402
from bench_models import Kit  # noqa: E402

SLOW_BF16 = {"gflops": 150.0, "gflops_bf16": 0.3}


def test_bf16_where_its_matmul_beats_fp32():
    mode = fast_mode({"gflops": 186.0, "gflops_bf16": 762.0}, ["avx2"])
    assert mode["name"] == "bf16 autocast" and mode["sam"] == {"dtype": "bfloat16"}


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed")
@pytest.mark.parametrize("flag", ["avx512_vnni", "avx_vnni", "amx_int8"])
def test_int8_only_with_int8_dot_products(flag):
    mode = fast_mode(SLOW_BF16, ["avx2", "fma", flag])
    assert mode["name"] == "int8 (torchao)" and flag in mode["why"]


@pytest.mark.parametrize("flags", [["avx", "avx2", "fma"], [], None])
def test_the_lighter_sam_on_a_cpu_without_fast_bf16_or_int8(flags):
    mode = fast_mode(SLOW_BF16, flags)
    assert mode["name"] == "SAM vit_b" and mode["sam_model"] == "vit_b"
    assert mode["sam"] == {} and mode["grounding_dino"] == {}
    assert "no int8 dot products" in mode["why"]


def test_the_lighter_sam_goes_into_the_fast_recipe(tmp_path, monkeypatch):
    """SAM's checkpoints are really written (tiny, quick mode) and loaded by the stage each recipe names."""
    import torch

    kit = Kit(quick=True, cache=tmp_path)
    monkeypatch.setattr(Kit, "gd_params", lambda self: {})  # the other stages' files: not this test's subject
    monkeypatch.setattr(Kit, "tagger_params", lambda self, stage: {})
    monkeypatch.setattr(Kit, "official_gdino_spec", lambda self: _spec(tmp_path))
    sam = {s["use"]: s["with"] for s in recipe(kit, fast_mode(SLOW_BF16, ["avx2"]))["stages"]}["sam"]
    assert sam["model"] == "vit_b" and Path(sam["checkpoint"]).name == "sam_vit_b_random.pth"
    exact = {s["use"]: s["with"] for s in recipe(kit)["stages"]}["sam"]
    assert exact["model"] == "vit_h" and Path(exact["checkpoint"]).name == "sam_random.pth"
    for params in (sam, exact):
        state = torch.load(params["checkpoint"], weights_only=True)
        assert any(key.startswith("image_encoder.") for key in state)


def _spec(folder: Path) -> Path:
    path = folder / "spec.json"
    path.write_text('{"checkpoint": "gd.pth"}')
    return path


def _chain_run() -> dict:
    import json

    return json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results_chain_2026-12-03.json").read_text())


def test_a_lighter_sam_fast_row_has_no_flop_limit_of_its_own():
    """The recorded chain run of 2026-12-03 (fast mode SAM vit_b): the exact chain's FLOP limit is not the fast
    row's, so its limit cells are empty, and no bf16 rate is named."""
    from bench_report import recipe_table

    lines = recipe_table(_chain_run())
    fast = next(line for line in lines if line.startswith("| recognize run, fast mode: SAM vit_b"))
    exact = next(line for line in lines if line.startswith("| recognize run (exact)"))
    assert fast.split(" | ")[7:11] == ["–", "–", "–", "–"]
    assert exact.split(" | ")[7] == "47.99"
    assert not any("bf16 rate" in line for line in lines)


def test_a_bf16_fast_row_is_limited_by_the_bf16_rate():
    from bench_report import recipe_table

    results = _chain_run()
    results["recipe"]["fast_mode"] = {"name": "bf16 autocast", "why": "test"}
    results["matmul"]["gflops_bf16"] = 580.0
    lines = recipe_table(results)
    fast = next(line for line in lines if line.startswith("| recognize run, fast mode: bf16 autocast"))
    assert fast.split(" | ")[7].endswith("(bf16)")
    assert any("÷ the bf16 rate 580" in line for line in lines)
