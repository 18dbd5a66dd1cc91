"""Concurrent requests grouped into micro-batches per stage, and per-image results reused.

Each distinct stage object gets a `StageBatcher`: requests put their frames on its queue; its
worker takes the first waiting item, keeps collecting until `max_batch_size` frames are in hand
or `max_wait_ms` has passed, and runs the stage once on all of them in the stage's own thread
(a stage object is never called from two threads at once). N clients at once thus cost about
N/batch forward passes instead of N.

A failed merged batch is re-run item by item, so a stage error on one request's image fails that
request only. A request whose client went away is skipped if it is still waiting.

`Runner.run` walks a variant's stages for one request. Results after each image-scope stage are
kept (bounded, `result_cache_mb`) under (pixels, stage configurations so far): asking again
about the same image with another threshold on stage k re-runs stages k.. only; those still find
the image encodings in `recognize.feature_cache`.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from recognize import heap
from recognize.feature_cache import FeatureCache
from recognize.frame import Frame
from recognize.serve.metrics import Metrics
from recognize.serve.variants import Variant
from recognize.stage import Stage

log = logging.getLogger("recognize.serve")


class StageFailed(Exception):
    """A stage raised on a request's frames; the message is one line for the client."""


def copy_frame(frame: Frame) -> Frame:
    """An independent copy of the results; the decoded pixels are shared (no stage writes to them)."""
    fields = {name: copy.deepcopy(getattr(frame, name)) for name in Frame.model_fields}
    new = Frame.model_construct(_fields_set=set(frame.model_fields_set), **fields)
    new._image = frame._image
    return new


def frame_bytes(frame: Frame) -> int:
    masks = sum(r.mask.nbytes for r in frame.regions if r.mask is not None)
    return 2048 + masks + 256 * (len(frame.tags) + len(frame.regions))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass
class _Item:
    frames: list[Frame]
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class StageResult:
    frames: list[Frame]
    seconds: float  # the stage call this request's frames were part of
    batch_frames: int


def _log_failed_trim(future: asyncio.Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("handing freed memory back failed: %s", future.exception())


class StageBatcher:
    """The queue and worker of one stage object."""

    def __init__(self, stage: Stage, max_batch_size: int, max_wait_s: float, metrics: Metrics,
                 on_batch_done: Callable[[], None] | None = None) -> None:
        self.stage = stage
        self.on_batch_done = on_batch_done  # the runner's check whether the heap can go back
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self.merge = stage.scope == "image"  # a dataset-scope stage sees exactly one request's frames
        self.queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{stage.name}")
        self.worker: asyncio.Task | None = None
        self.queued_frames = 0
        self.busy = False

    def start(self) -> None:
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._work(), name=f"batcher-{self.stage.name}")

    async def submit(self, frames: list[Frame]) -> StageResult:
        self.start()
        future = asyncio.get_running_loop().create_future()
        self.queued_frames += len(frames)
        self.metrics.stage_queue.labels(self.stage.name).inc(len(frames))
        await self.queue.put(_Item(frames, future))
        return await future

    async def close(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def _collect(self) -> list[_Item]:
        items = [await self.queue.get()]
        frames = len(items[0].frames)
        if not self.merge:
            return items
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while frames < self.max_batch_size:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            items.append(item)
            frames += len(item.frames)
        return items

    @property
    def idle(self) -> bool:
        return not self.busy and self.queue.empty()

    async def _work(self) -> None:
        while True:
            items = await self._collect()
            self.busy = True
            try:
                await self._run(items)
            except Exception as exc:  # noqa: BLE001 - a bug here must fail requests, not hang them
                log.exception("batcher of stage %r failed", self.stage.name)
                for item in items:
                    self._fail(item, exc)
            finally:
                self.busy = False
                if self.on_batch_done is not None:
                    self.on_batch_done()

    async def _run(self, items: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        for item in items:
            self.queued_frames -= len(item.frames)
            self.metrics.stage_queue.labels(self.stage.name).dec(len(item.frames))
        items = [item for item in items if not item.future.done()]  # clients that left
        if not items:
            return
        frames = [frame for item in items for frame in item.frames]
        backup = [copy_frame(f) for f in frames] if len(items) > 1 else None
        self.metrics.batch_frames.labels(self.stage.name).observe(len(frames))
        self.metrics.batch_requests.labels(self.stage.name).observe(len(items))
        start = time.perf_counter()
        try:
            out = await loop.run_in_executor(self.executor, self._call, frames)
        except Exception as exc:  # noqa: BLE001 - isolate the request that caused it
            if backup is None:
                self._fail(items[0], exc)
                return
            await self._one_by_one(items, backup)
            return
        seconds = time.perf_counter() - start
        self.metrics.stage_seconds.labels(self.stage.name).observe(seconds)
        offset = 0
        for item in items:
            n = len(item.frames)
            if not item.future.done():
                item.future.set_result(StageResult(out[offset:offset + n], seconds, len(frames)))
            offset += n

    async def _one_by_one(self, items: list[_Item], backup: list[Frame]) -> None:
        loop = asyncio.get_running_loop()
        offset = 0
        for item in items:
            n = len(item.frames)
            frames, offset = backup[offset:offset + n], offset + n
            if item.future.done():
                continue
            start = time.perf_counter()
            try:
                out = await loop.run_in_executor(self.executor, self._call, frames)
            except Exception as exc:  # noqa: BLE001
                self._fail(item, exc)
                continue
            seconds = time.perf_counter() - start
            self.metrics.batch_frames.labels(self.stage.name).observe(n)
            self.metrics.batch_requests.labels(self.stage.name).observe(1)
            self.metrics.stage_seconds.labels(self.stage.name).observe(seconds)
            if not item.future.done():
                item.future.set_result(StageResult(out, seconds, n))

    def _call(self, frames: list[Frame]) -> list[Frame]:
        out = self.stage(frames)
        if out is None or len(out) != len(frames):
            raise RuntimeError(f"stage returned {0 if out is None else len(out)} frames for {len(frames)}")
        return out

    def _fail(self, item: _Item, exc: Exception) -> None:
        self.metrics.stage_errors.labels(self.stage.name).inc()
        if not item.future.done():
            item.future.set_exception(StageFailed(f"stage {self.stage.name!r} failed: {one_line(exc)}"))


@dataclass
class RunResult:
    frames: list[Frame]
    timings: dict[str, float]
    reused: list[str]


class Runner:
    """Runs variants for requests: one batcher per stage object, and the per-image result cache."""

    def __init__(self, max_batch_size: int, max_wait_ms: float, result_cache_mb: float, metrics: Metrics,
                 max_batchers: int = 64) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics
        self.results = FeatureCache(int(result_cache_mb * 2**20))
        self.max_batchers = max_batchers
        self._batchers: OrderedDict[int, StageBatcher] = OrderedDict()
        self._running = 0  # requests inside `run`; the heap is trimmed when the last one leaves
        self._trimming: asyncio.Future | None = None

    def batcher(self, stage: Stage) -> StageBatcher:
        """The batcher of `stage`; idle batchers of stages not used lately are closed (each holds a thread)."""
        found = self._batchers.get(id(stage))
        if found is not None and found.stage is stage:
            self._batchers.move_to_end(id(stage))
            return found
        found = self._batchers[id(stage)] = StageBatcher(stage, self.max_batch_size, self.max_wait_s, self.metrics,
                                                      on_batch_done=self._trim_if_idle)
        if len(self._batchers) > self.max_batchers:
            for key, old in list(self._batchers.items())[:-1]:
                if old.idle:
                    del self._batchers[key]
                    asyncio.get_running_loop().create_task(old.close())
                    break
        return found

    @property
    def queued_frames(self) -> int:
        return sum(b.queued_frames for b in self._batchers.values())

    async def close(self) -> None:
        for batcher in list(self._batchers.values()):
            await batcher.close()
        self._batchers.clear()
        if self._trimming is not None:
            await asyncio.shield(self._trimming)

    async def run(self, variant: Variant, frames: list[Frame], content_keys: list[str]) -> RunResult:
        """Every stage of `variant` over one request's `frames`, reusing what cannot have changed.

        When no request is left running and no stage computes, the memory the stages freed and kept
        for reuse (`recognize.heap`) goes back to the system (`_trim_if_idle`). Not when one stage's
        queue empties: the request moves on to the next stage, which reuses that memory (trimming
        there made every stage fault its working memory in again, `recognize.resident_weights`)."""
        self._running += 1
        try:
            return await self._run_stages(variant, frames, content_keys)
        finally:
            self._running -= 1
            self._trim_if_idle()

    def _trim_if_idle(self) -> None:
        """Trim the heap when no request runs and no stage computes (a disconnected client's batch
        still runs in its stage's thread: its end checks again). On a pool thread, not awaited, so no
        response waits for it; `close()` does."""
        if self._running or any(batcher.busy for batcher in self._batchers.values()):
            return
        if self._trimming is not None and not self._trimming.done():
            return
        self._trimming = asyncio.get_running_loop().run_in_executor(None, heap.trim)
        self._trimming.add_done_callback(_log_failed_trim)

    async def _run_stages(self, variant: Variant, frames: list[Frame], content_keys: list[str]) -> RunResult:
        stages = variant.stages
        # results are reusable up to the first dataset-scope stage (after it they depend on the other images)
        cacheable = next((i for i, s in enumerate(stages) if s.scope == "dataset"), len(stages))
        prefixes = ["\n".join(variant.stage_keys[: i + 1]) for i in range(len(stages))]
        done = [0] * len(frames)  # stages already applied to each frame
        current = list(frames)
        if self.results.enabled:
            for f, key in enumerate(content_keys):
                for i in reversed(range(cacheable)):
                    hit = self.results.get((key, prefixes[i]))
                    if hit is not None:
                        restored = copy_frame(hit)
                        restored.source, restored.name = frames[f].source, frames[f].name
                        restored._image = frames[f]._image
                        current[f], done[f] = restored, i + 1
                        break
        timings: dict[str, float] = {}
        reused: list[str] = []
        for i, stage in enumerate(stages):
            todo = [f for f in range(len(current)) if done[f] <= i]
            if not todo:
                reused.append(stage.name)
                timings[stage.name] = 0.0
                continue
            result = await self.batcher(stage).submit([current[f] for f in todo])
            timings[stage.name] = timings.get(stage.name, 0.0) + result.seconds
            for f, frame in zip(todo, result.frames, strict=True):
                current[f], done[f] = frame, i + 1
                if i < cacheable and self.results.enabled:
                    self.results.put((content_keys[f], prefixes[i]), copy_frame(frame), size=frame_bytes(frame))
        return RunResult(current, timings, reused)
