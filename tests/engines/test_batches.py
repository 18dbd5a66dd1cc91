"""recognize.engines.batches: a pipeline of several stages makes no prepacked oneDNN weight copies (it
drops any at its start), a pipeline of one stage does, and the end of a run lifts the suspension
(`end_of_run_memory`)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recognize import Frame, Stage, onednn_linear, resident_weights
from recognize.engines import batches
from recognize.engines.timing import StageTimer
from recognize.weights_file import read_weights

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise is Linux's"),
              pytest.mark.skipif(not onednn_linear.available("packed"), reason="no prepacked oneDNN weights here")]


@pytest.fixture(autouse=True)
def only_this_tests_weights(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Weights mapped or packed by earlier tests (shared models still alive) would count here."""
    monkeypatch.setattr(resident_weights, "_mapped", [])
    cache: dict = {}
    monkeypatch.setattr(onednn_linear, "ONEDNN", True)  # packing is oneDNN's (its default on AVX-512 CPUs)
    monkeypatch.setattr(onednn_linear, "_packed", cache)
    monkeypatch.setattr(onednn_linear, "PACKED", True)
    monkeypatch.setattr(onednn_linear, "_suspended", False)
    return cache


def _mapped_layer(path: Path) -> nn.Linear:
    """A Linear whose weight is a memory-mapped checkpoint's (as the stages' models are)."""
    torch.manual_seed(0)
    torch.save(nn.Linear(64, 32).state_dict(), path)
    layer = nn.Linear(64, 32, device="meta").eval()
    layer.load_state_dict(read_weights(path), assign=True)
    return layer


def _pack(layer: nn.Linear) -> None:
    with torch.inference_mode():
        onednn_linear.linear(layer, torch.randn(3, 64))


def test_end_of_run_lifts_the_suspension(tmp_path: Path) -> None:
    """`suspend_packing` drops every copy and makes none; the engines' end of run packs again."""
    layer = _mapped_layer(tmp_path / "model.pth")
    _pack(layer)
    assert onednn_linear.packed_bytes() > 0
    assert onednn_linear.suspend_packing() > 0
    _pack(layer)
    assert onednn_linear.packed_bytes() == 0
    batches.end_of_run_memory()
    _pack(layer)
    assert onednn_linear.packed_bytes() > 0


class PackingStage(Stage):
    """Multiplies by its layer (packing its weight) and records the packed bytes it found on arrival."""

    name = "packing"
    kind = "filter"

    def __init__(self, layer: nn.Linear, **kwargs) -> None:
        super().__init__(**kwargs)
        self.layer, self.packed_at_start = layer, []

    def process(self, frames):
        self.packed_at_start.append(onednn_linear.packed_bytes())
        _pack(self.layer)
        return frames


def test_a_chains_stages_each_find_no_other_stages_packed_copies(tmp_path: Path) -> None:
    first, second = (PackingStage(_mapped_layer(tmp_path / f"model{i}.pth")) for i in range(2))
    frames = [Frame.from_array(np.full((4, 4, 3), 100, np.uint8), source="a", name="a")]

    for _ in range(2):
        batches.apply_stages([first, second], frames, StageTimer())

    assert first.packed_at_start == second.packed_at_start == [0, 0]
    assert onednn_linear.packed_bytes() == 0  # a chain makes none


def test_a_local_run_of_a_chain_ends_with_packing_resumed(tmp_path: Path) -> None:
    """The engine's end of run lifts the suspension: a later single-model run packs again."""
    from recognize.engines.local import LocalEngine
    from recognize.pipeline import Pipeline

    first, second = (PackingStage(_mapped_layer(tmp_path / f"model{i}.pth")) for i in range(2))
    frames = [Frame.from_array(np.full((4, 4, 3), 100, np.uint8), source="a", name="a")]
    list(LocalEngine(isolate=False).run(Pipeline([first, second]), frames))
    assert first.packed_at_start == second.packed_at_start == [0]
    assert not onednn_linear._suspended
    _pack(first.layer)
    assert onednn_linear.packed_bytes() > 0


@pytest.mark.parametrize("stages", [1, 2])
def test_only_a_pipeline_of_one_stage_packs(tmp_path: Path, stages: int) -> None:
    """A chain packs nothing, from its first batch on (copies made before the first release left holes
    in the heap that raised the benchmark chain's peak); one stage packs and keeps its copy."""
    layer = _mapped_layer(tmp_path / "model.pth")  # one weights file: release() would not apply
    chain = [PackingStage(layer)] + [PackingStage(nn.Linear(64, 32).eval()) for _ in range(stages - 1)]
    frames = [Frame.from_array(np.full((4, 4, 3), 100, np.uint8), source="a", name="a")]

    batches.apply_stages(chain, frames, StageTimer())

    assert (onednn_linear.packed_bytes() > 0) == (stages == 1)
