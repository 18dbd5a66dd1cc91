"""recognize.resident_weights: a memory-mapped checkpoint's pages leave RSS and come back unchanged."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch
from resident import AnonymousMemory, mapped_ranges, resident_kib

from recognize import resident_weights
from recognize.weights_file import read_weights

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise / smaps are Linux's")


@pytest.fixture(autouse=True)
def only_this_tests_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights mapped by earlier tests (shared models still alive) would count as another model."""
    monkeypatch.setattr(resident_weights, "_mapped", [])


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


@pytest.fixture
def third_model(tmp_path: Path) -> dict:
    path = tmp_path / "third.pth"
    torch.save({"w": torch.full((1000,), 2.0)}, path)
    return read_weights(path)


def test_memory_at_a_freed_models_address_keeps_its_data(checkpoint: Path, other_model: dict,
                                                         third_model: dict) -> None:
    """A model freed before `release()`: whatever is mapped at its old address is not its weights."""
    state = read_weights(checkpoint)
    assert float(state["big"].sum()) != 0.0
    (start, end), = mapped_ranges(checkpoint)
    del state
    gc.collect()
    assert mapped_ranges(checkpoint) == []
    memory = AnonymousMemory(start, end - start)
    try:
        report = resident_weights.release()

        assert memory.intact()
        assert str(checkpoint.resolve()) not in report.kept
        assert float(other_model["w"].sum()) == 1000.0 and float(third_model["w"].sum()) == 2000.0
    finally:
        memory.close()


def test_a_model_freed_by_another_thread_during_release_is_unmapped_after_it(
        checkpoint: Path, other_model: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race a list of addresses read beforehand has: the model's last reference dropped (its
    file unmapped) and anonymous memory mapped at its address right before the madvise (after
    the page check, which would otherwise see that memory's private pages and keep it)."""
    state = read_weights(checkpoint)
    assert float(state["big"].sum()) != 0.0
    (start, end), = mapped_ranges(checkpoint)
    memories: list[AnonymousMemory] = []
    libc = resident_weights._libc()

    class AnotherThreadFreesTheModelFirst:
        def madvise(self, address, length, advice) -> int:
            if not memories and start <= address.value < end:
                state.clear()  # the model's last references gone
                gc.collect()
                memories.append(AnonymousMemory(start, end - start))
            return libc.madvise(address, length, advice)

        def __getattr__(self, name: str):
            return getattr(libc, name)

    monkeypatch.setattr(resident_weights, "_libc", AnotherThreadFreesTheModelFirst)
    try:
        resident_weights.release()

        assert memories and memories[0].intact()
        assert mapped_ranges(checkpoint) == []  # held through the release only, unmapped after it
    finally:
        for memory in memories:
            memory.close()


def test_unmap_pages_takes_one_tensors_pages_out_of_rss(checkpoint: Path) -> None:
    """What the packed oneDNN weights call: one file is enough (unlike `release`); the tensor reads the
    same values afterwards, from the page cache."""
    state = read_weights(checkpoint)
    expected = {name: tensor.clone() for name, tensor in state.items()}
    assert resident_kib(checkpoint) >= 15_000

    unmapped = resident_weights.unmap_pages(state["big"])

    assert unmapped >= 15_000 * 1024
    assert resident_kib(checkpoint) < 1_000
    for name, tensor in state.items():
        assert torch.equal(tensor, expected[name])
    assert resident_kib(checkpoint) >= 15_000


def test_unmap_pages_leaves_tensors_of_no_noted_file_alone(checkpoint: Path) -> None:
    mapped = torch.load(checkpoint, weights_only=True, mmap=True)  # mapped, but not through read_weights
    assert float(mapped["big"].sum()) != 0.0
    anonymous = torch.randn(4_000_000)
    before = anonymous.clone()

    assert resident_weights.unmap_pages(mapped["big"]) == 0
    assert resident_weights.unmap_pages(anonymous) == 0

    assert resident_kib(checkpoint) >= 15_000
    assert torch.equal(anonymous, before)


def test_unmap_pages_keeps_a_storage_with_a_written_page(checkpoint: Path) -> None:
    """DONTNEED on a page this process wrote (copy-on-write) would revert it to the file's bytes."""
    state = read_weights(checkpoint)
    state["big"][1_000_000:1_000_001].add_(1.0)
    written = state["big"].clone()

    assert resident_weights.unmap_pages(state["big"]) == 0

    assert torch.equal(state["big"], written)
    assert resident_kib(checkpoint) >= 15_000


def test_unmap_pages_obeys_the_opt_out_and_a_load_under_way(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = read_weights(checkpoint)
    assert float(state["big"].sum()) != 0.0
    with monkeypatch.context() as env:
        env.setenv(resident_weights.KEEP_ENV, "1")
        assert resident_weights.unmap_pages(state["big"]) == 0
    with resident_weights.loading():
        assert resident_weights.unmap_pages(state["big"]) == 0
    assert resident_kib(checkpoint) >= 15_000
    assert resident_weights.unmap_pages(state["big"]) >= 15_000 * 1024  # neither: unmapped
