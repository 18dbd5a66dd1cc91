"""The Ray engine's driver hands its kept heap back when a run's results end, however they end
(`recognize.engines.ray_engine._trimmed_at_end`; no Ray needed: the wrapper is plain Python)."""

from __future__ import annotations

import pytest

from recognize import heap
from recognize.engines.ray_engine import _trimmed_at_end


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(heap, "trim", lambda: calls.append(1))
    return calls


def test_after_the_last_result_and_not_before(trims: list[int]) -> None:
    results = _trimmed_at_end(iter([1, 2]))
    assert next(results) == 1 and next(results) == 2 and trims == []
    assert list(results) == [] and trims == [1]


def test_when_the_run_fails(trims: list[int]) -> None:
    def failing():
        yield 1
        raise RuntimeError("a stage failed")

    results = _trimmed_at_end(failing())
    next(results)
    with pytest.raises(RuntimeError, match="a stage failed"):
        next(results)
    assert trims == [1]


def test_when_the_caller_stops_early(trims: list[int]) -> None:
    results = _trimmed_at_end(iter([1, 2, 3]))
    next(results)
    results.close()
    assert trims == [1]
