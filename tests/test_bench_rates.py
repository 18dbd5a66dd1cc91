"""`bench_jobs._rate`, the matmul probes' timing loop: a product slower than a third of the budget is
run twice (one warm-up, then one run that decides and is the timing), not the usual five or more (bf16 on CPUs without bf16 instructions
took ~5 minutes per probe that way)."""

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_jobs import _rate  # noqa: E402


def _counting(seconds: float) -> tuple[list[int], Callable[[], None]]:
    calls: list[int] = []

    def run() -> None:
        calls.append(1)
        time.sleep(seconds)

    return calls, run


def test_a_slow_product_is_timed_once_after_one_warm_up():
    calls, run = _counting(0.15)
    result = _rate(run, 100, budget=0.3)
    assert len(calls) == 2 and result["runs"] == 1
    assert result["best"] == result["typical"] > 0
    assert result["best"] < 2 * 100**3 / 0.15 / 1e9 * 1.01  # the rate of one sleep-long run, not faster


def test_a_fast_product_gets_two_warm_ups_and_three_timed_runs_at_least():
    calls, run = _counting(0.0)
    result = _rate(run, 100, budget=0.3)
    assert result["runs"] >= 3 and len(calls) == result["runs"] + 2
    assert result["best"] >= result["typical"] > 0
