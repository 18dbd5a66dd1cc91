"""Micro-batching and result reuse, driven directly (no HTTP)."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np

from recognize.frame import Frame, Region, Tag
from recognize.serve.batching import Runner, copy_frame
from recognize.serve.metrics import Metrics
from recognize.serve.variants import Variants

from .conftest import TEST_RECIPE, write_recipe


def test_copy_frame_is_independent_but_shares_pixels() -> None:
    frame = Frame.from_array(np.zeros((4, 4, 3), np.uint8), tags=[Tag(name="a")],
                             regions=[Region(box=(0, 0, 1, 1), tag="a", mask=np.ones((4, 4), bool))])
    copy = copy_frame(frame)
    copy.tags.append(Tag(name="b"))
    copy.regions[0].mask[0, 0] = False
    assert [t.name for t in frame.tags] == ["a"] and frame.regions[0].mask.all()
    assert copy.image is frame.image


def test_runner_batches_concurrent_requests_and_reuses_prefixes(tmp_path, test_stages) -> None:
    variants = Variants(write_recipe(tmp_path, TEST_RECIPE))
    metrics = Metrics()

    async def scenario():
        runner = Runner(max_batch_size=8, max_wait_ms=100, result_cache_mb=16, metrics=metrics)
        frames = [Frame.from_array(np.full((8, 8, 3), v, np.uint8), source=f"upload:{v}") for v in (10, 200, 30)]
        results = await asyncio.gather(*[runner.run(variants.base, [f], [str(i)]) for i, f in enumerate(frames)])
        again = await runner.run(variants.get(["stages.1.with.score=0.2"]),
                                 [Frame.from_array(np.full((8, 8, 3), 10, np.uint8), source="upload:again")], ["0"])
        await runner.close()
        return results, again

    results, again = asyncio.run(scenario())
    assert [r.frames[0].tags[0].name for r in results] == ["dark", "bright", "dark"]
    assert metrics.batch_frames.labels("brightness")._sum.get() == 3
    calls = [s for s in metrics.registry.collect() if s.name == "recognize_batch_requests"][0]
    count = [x.value for x in calls.samples if x.name.endswith("_count") and x.labels["stage"] == "brightness"]
    assert count == [1.0]  # three requests, one brightness call
    assert again.reused == ["brightness"] and again.frames[0].source == "upload:again"
    assert again.frames[0].regions[0].score == 0.2


def test_batchers_of_stages_no_longer_used_are_closed(tmp_path, test_stages) -> None:
    """Every distinct threshold makes a stage object; their batchers (a thread each) must not pile up."""
    variants = Variants(write_recipe(tmp_path, TEST_RECIPE), max_variants=2)

    async def scenario():
        runner = Runner(max_batch_size=4, max_wait_ms=0, result_cache_mb=0, metrics=Metrics(), max_batchers=4)
        for i in range(10):
            frame = Frame.from_array(np.full((8, 8, 3), i, np.uint8))
            await runner.run(variants.get([f"stages.1.with.score=0.{i}"]), [frame], [str(i)])
            await asyncio.sleep(0)
        count = len(runner._batchers)
        await runner.close()
        return count

    assert asyncio.run(scenario()) <= 5


def test_the_heap_goes_back_when_no_request_is_left_not_between_stages(tmp_path, test_stages, monkeypatch) -> None:
    """Three stages, three concurrent requests: the memory kept for reuse (`recognize.heap`) goes back once,
    after the last request, never while a request is between two stages (the next one reuses it)."""
    from recognize import heap

    variants = Variants(write_recipe(tmp_path, TEST_RECIPE))
    seen: list[int] = []

    async def scenario():
        runner = Runner(max_batch_size=8, max_wait_ms=20, result_cache_mb=0, metrics=Metrics())
        monkeypatch.setattr(heap, "trim", lambda: seen.append(getattr(runner, "_running", -1)))
        frames = [Frame.from_array(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200, 30)]
        await asyncio.gather(*[runner.run(variants.base, [f], [str(i)]) for i, f in enumerate(frames)])
        if runner._trimming is not None:
            await runner._trimming  # on a pool thread, after the responses
        first = list(seen)
        await runner.run(variants.base, [frames[0]], ["again"])
        await runner.close()  # waits for a trim under way
        return first

    first = asyncio.run(scenario())
    assert first == [0]  # once, with no request running (was: after every stage's batch)
    assert seen == [0, 0]


def test_a_disconnected_clients_batch_is_trimmed_after_it_ends_not_while_it_computes(monkeypatch) -> None:
    """A cancelled request leaves its batch computing in the stage's thread: the heap goes back after that
    batch (what it frees included), not at the cancellation, while it still computes."""
    import threading
    import types

    from recognize import heap

    events: list[str] = []
    started = threading.Event()

    class Slow:
        name, scope = "slow", "image"

        def __call__(self, frames):
            started.set()
            events.append("stage start")
            threading.Event().wait(0.3)
            events.append("stage end")
            return frames

    monkeypatch.setattr(heap, "trim", lambda: events.append("trim"))
    variant = types.SimpleNamespace(stages=[Slow()], stage_keys=["slow"])

    async def scenario():
        runner = Runner(max_batch_size=8, max_wait_ms=0, result_cache_mb=0, metrics=Metrics())
        task = asyncio.ensure_future(runner.run(variant, [Frame.from_array(np.zeros((8, 8, 3), np.uint8))], ["k"]))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        while any(b.busy for b in runner._batchers.values()):
            await asyncio.sleep(0.01)
        await runner.close()

    asyncio.run(scenario())
    assert events == ["stage start", "stage end", "trim"], events
