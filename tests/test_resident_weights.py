"""recognize.resident_weights: a memory-mapped checkpoint's pages leave RSS and come back unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from resident import resident_kib

from recognize import resident_weights
from recognize.weights_file import read_weights

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise / smaps are Linux's")


@pytest.fixture(autouse=True)
def only_this_tests_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights mapped by earlier tests (shared models still alive) would count as another model."""
    monkeypatch.setattr(resident_weights, "_mapped", set())


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pth"
    generator = torch.Generator().manual_seed(0)
    torch.save({"big": torch.randn(4_000_000, generator=generator), "small": torch.randn(64, generator=generator)}, path)
    return path


@pytest.fixture
def other_model(tmp_path: Path) -> dict:
    """A second mapped weights file: `release` unmaps only where two models' weights compete."""
    path = tmp_path / "other.pth"
    torch.save({"w": torch.ones(1000)}, path)
    return read_weights(path)


def test_one_mapped_weights_file_is_left_resident(checkpoint: Path) -> None:
    state = read_weights(checkpoint)
    assert float(state["big"].sum()) != 0.0

    report = resident_weights.release()

    assert report.unmapped_bytes == 0
    assert resident_kib(checkpoint) >= 15_000


def test_pages_leave_rss_and_come_back_with_the_same_values(checkpoint: Path, other_model: dict) -> None:
    state = read_weights(checkpoint)
    expected = {name: tensor.clone() for name, tensor in state.items()}
    assert float(state["big"].sum()) == float(expected["big"].sum())  # touch every page
    assert resident_kib(checkpoint) >= 15_000  # 16 MB of floats mapped in

    report = resident_weights.release()

    assert report.unmapped_bytes >= 15_000 * 1024
    assert report.kept == []
    assert resident_kib(checkpoint) < 1_000
    for name, tensor in state.items():  # read again from the page cache: the very same values
        assert torch.equal(tensor, expected[name])
    assert resident_kib(checkpoint) >= 15_000


def test_a_mapping_with_a_written_page_is_kept(checkpoint: Path, other_model: dict) -> None:
    state = read_weights(checkpoint)
    state["small"].add_(1.0)  # copy-on-write: that page now exists only in this process
    written = state["small"].clone()

    report = resident_weights.release()

    assert str(checkpoint.resolve()) in report.kept
    assert torch.equal(state["small"], written)  # DONTNEED would have reverted it to the file


def test_files_never_read_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"w": torch.ones(1_000_000)}, path)
    state = torch.load(path, weights_only=True, mmap=True)  # mapped, but not through read_weights
    assert float(state["w"].sum()) == 1_000_000.0

    resident_weights.release()

    assert resident_kib(path) >= 3_500


def test_the_opt_out_keeps_every_page_mapped(checkpoint: Path, other_model: dict,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(resident_weights.KEEP_ENV, "1")
    state = read_weights(checkpoint)
    assert float(state["big"].sum()) != 0.0

    report = resident_weights.release()

    assert report.unmapped_bytes == 0
    assert resident_kib(checkpoint) >= 15_000
