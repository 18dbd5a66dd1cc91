"""recognize.prefetch: the next batches decode on a thread while the current one is processed."""

from __future__ import annotations

import os
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from recognize.errors import ImageError, SettingError
from recognize.frame import Frame
from recognize.prefetch import MAX_WORKERS, WORKERS_ENV, batched, prefetch, prepare_for, workers_for, workers_setting
from recognize.stage import Stage


@pytest.fixture
def files(tmp_path):
    paths = []
    for i in range(5):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((20 + i, 30, 3), 40 * i, np.uint8)).save(path)
        paths.append(path)
    return paths


def test_same_batches_in_order_each_frame_decoded_before_handed_over(files):
    frames = [Frame(source=str(p), name=p.stem) for p in files]
    prepared_on: dict[str, str] = {}

    def prepare(frame: Frame) -> None:
        frame.image  # noqa: B018
        prepared_on[frame.name] = threading.current_thread().name

    seen = []
    for batch in prefetch(batched(frames, 2), depth=1, prepare=prepare):
        assert all(frame.name in prepared_on for frame in batch)
        seen.append([frame.name for frame in batch])
        assert all(frame.height == 20 + int(frame.name[-1]) for frame in batch)  # decoded: size known
    assert seen == [["img0", "img1"], ["img2", "img3"], ["img4"]]
    assert set(prepared_on.values()) == {"recognize-prefetch"}


def test_the_next_batch_is_prepared_while_the_current_one_is_processed(files):
    frames = [Frame(source=str(p), name=p.stem) for p in files[:4]]
    second_started = threading.Event()

    def prepare(frame: Frame) -> None:
        if frame.name == "img2":
            second_started.set()
        frame.image  # noqa: B018

    for index, batch in enumerate(prefetch(batched(frames, 2), depth=1, prepare=prepare)):
        if index == 0:  # still "computing" batch 0: batch 1 must get prepared meanwhile
            assert second_started.wait(timeout=30), "the next batch was not prepared during this one"


def test_at_most_depth_batches_wait_ahead(files):
    frames = [Frame(source=str(p), name=p.stem) for p in files]
    prepared = []
    lock = threading.Lock()

    def prepare(frame: Frame) -> None:
        with lock:
            prepared.append(frame.name)

    iterator = prefetch(batched(frames, 1), depth=2, prepare=prepare)
    first = next(iterator)
    assert first[0].name == "img0"
    # the worker may be preparing one more batch than it can hand over: 1 consumed + 2 queued + 1 blocked
    for _ in range(100):
        threading.Event().wait(0.01)
    assert len(prepared) <= 4
    assert [b[0].name for b in iterator] == ["img1", "img2", "img3", "img4"]


def test_an_unreadable_image_fails_in_the_consumer_with_its_own_error(files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    frames = [Frame(source=str(files[0])), Frame(source=str(bad)), Frame(source=str(files[1]))]
    batches = list(prefetch(batched(frames, 3), depth=1))
    assert len(batches) == 1
    good, broken, other = batches[0]
    assert good.image.shape == (20, 30, 3) and other.image.shape == (21, 30, 3)
    with pytest.raises(ImageError, match="bad.png"):
        broken.image  # noqa: B018


def test_an_error_of_the_source_reaches_the_consumer(files):
    def source():
        yield [Frame(source=str(files[0]))]
        raise ValueError("listing failed")

    iterator = prefetch(source(), depth=1)
    assert len(next(iterator)) == 1
    with pytest.raises(ValueError, match="listing failed"):
        next(iterator)


def test_closing_early_stops_the_thread(files):
    frames = [Frame(source=str(p)) for p in files]
    iterator = prefetch(batched(frames, 1), depth=1)
    next(iterator)
    iterator.close()
    assert not any(t.name == "recognize-prefetch" and t.is_alive() for t in threading.enumerate())


def test_with_workers_the_frames_of_a_batch_are_prepared_at_once_and_handed_over_in_order(files):
    frames = [Frame(source=str(p), name=p.stem) for p in files[:4]]
    together = threading.Barrier(2, timeout=10)  # broken unless two frames are being prepared at once
    threads = set()

    def prepare(frame: Frame) -> None:
        together.wait()
        frame.image  # noqa: B018
        threads.add(threading.current_thread().name)

    seen = []
    for batch in prefetch(batched(frames, 2), depth=1, prepare=prepare, workers=2):
        assert all(frame.height == 20 + int(frame.name[-1]) for frame in batch)  # decoded before handed over
        seen.append([frame.name for frame in batch])
    assert seen == [["img0", "img1"], ["img2", "img3"]]
    assert len(threads) == 2 and all(name.startswith("recognize-prefetch_") for name in threads)


def test_with_workers_an_error_of_prepare_reaches_the_consumer(files):
    frames = [Frame(source=str(p), name=p.stem) for p in files[:4]]

    def prepare(frame: Frame) -> None:
        if frame.name == "img3":
            raise RuntimeError("prepare broke")

    iterator = prefetch(batched(frames, 2), depth=1, prepare=prepare, workers=2)
    assert [frame.name for frame in next(iterator)] == ["img0", "img1"]
    with pytest.raises(RuntimeError, match="prepare broke"):
        next(iterator)


def _on(device):
    return SimpleNamespace(params=SimpleNamespace(device=device))


def test_auto_by_default_several_workers_only_where_every_stage_computes_off_the_cpu(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setenv(WORKERS_ENV, "1")
    assert workers_for([_on("cuda")], 4) == 1  # asked for: one thread, as before
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert workers_for([_on("cuda")], 4) == 4  # the default is auto: measured faster beside an H200
    assert workers_for([_on("cpu")], 4) == 1
    monkeypatch.setenv(WORKERS_ENV, "auto")
    assert workers_for([_on("cpu")], 4) == 1  # the compute needs the cores: one thread hides decoding
    assert workers_for([_on("cpu"), _on("cuda")], 4) == 1
    assert workers_for([SimpleNamespace()], 4) == 1  # no stage with a device
    assert workers_for([_on("cuda"), SimpleNamespace()], 4) == 4  # one per frame of a batch
    assert workers_for([_on("cuda")], 64) == MAX_WORKERS
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert workers_for([_on("cuda")], 4) == 1  # two cores left to the GPU's thread and the writer


def test_the_workers_setting_and_a_bad_one_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert workers_for([_on("cpu")], 4) == 3
    monkeypatch.setenv(WORKERS_ENV, " AUTO ")
    assert workers_setting() == "auto"
    for bad in ("0", "-1", "two", "1.5", "\u00b2", "65"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(SettingError, match=f"{WORKERS_ENV}=") as error:
            workers_for([_on("cuda")], 4)
        assert "\n" not in str(error.value)


def test_closing_early_shuts_the_pool_down_without_waiting_and_cancels_what_is_queued(files, monkeypatch):
    import concurrent.futures

    import recognize.prefetch

    shutdowns = []

    class Recording(concurrent.futures.ThreadPoolExecutor):
        def shutdown(self, wait=True, *, cancel_futures=False):
            shutdowns.append((wait, cancel_futures))
            super().shutdown(wait=wait, cancel_futures=cancel_futures)

    monkeypatch.setattr(recognize.prefetch, "ThreadPoolExecutor", Recording)
    iterator = prefetch(batched([Frame(source=str(p)) for p in files], 2), depth=1, workers=2)
    next(iterator)
    iterator.close()
    assert shutdowns == [(False, True)]


def test_with_a_timer_waiting_for_a_batch_is_decode_and_preparing_beside_the_compute_is_overlapped(files):
    """summary.json's `decode`: before, the consumer's waits for the prefetch thread fell into `other`."""
    import time

    from recognize.engines.timing import DECODE, StageTimer

    frames = [Frame(source=str(p), name=p.stem) for p in files[:4]]
    timer = StageTimer()

    def prepare(frame: Frame) -> None:
        time.sleep(0.1)  # 0.2 s a batch
        frame.image  # noqa: B018

    for _ in prefetch(batched(frames, 2), depth=1, prepare=prepare, timer=timer):
        time.sleep(0.6)  # "computing": the next batch is prepared meanwhile
    # the first batch was waited for (~0.2 s); the second was ready when asked for (prepared beside)
    assert 0.18 <= timer.phases[DECODE] < 0.4
    assert timer.overlapped[DECODE] >= 0.15
    assert 0.38 <= timer.phases[DECODE] + timer.overlapped[DECODE] < 0.55  # both batches' preparing, counted once
    assert not timer.stages


def test_depth_zero_is_the_plain_loop(files):
    frames = [Frame(source=str(p)) for p in files]
    out = list(prefetch(batched(frames, 2), depth=0, prepare=lambda f: pytest.fail("nothing is prepared ahead")))
    assert [len(b) for b in out] == [2, 2, 1]


def test_the_local_engine_decodes_ahead_and_gives_the_same_results(test_stages, image_folder, monkeypatch):
    """The hook-in point: `LocalEngine(prefetch=n)` decodes on the prefetch thread, same outputs."""
    import recognize.images
    from recognize.engines.local import LocalEngine
    from recognize.images import expand_inputs
    from recognize.pipeline import Pipeline

    load_image = recognize.images.load_image
    decoded_on: list[str] = []

    def recording_load_image(*args, **kwargs):
        decoded_on.append(threading.current_thread().name)
        return load_image(*args, **kwargs)

    monkeypatch.setattr(recognize.images, "load_image", recording_load_image)

    def run(depth: int) -> list[tuple[list, list]]:
        pipeline = Pipeline([test_stages.Brightness(), test_stages.CenterBox()], batch_size=1)
        frames = [Frame(source=str(path), name=name) for path, name in expand_inputs([image_folder])]
        results = list(LocalEngine(prefetch=depth).run(pipeline, frames))
        return [(r.frame.tag_names, [x.box for x in r.frame.regions]) for r in results]

    plain = run(0)
    plain_threads, decoded_on[:] = list(decoded_on), []
    ahead = run(2)
    assert plain == ahead and len(plain) == 3
    assert plain_threads and "recognize-prefetch" not in plain_threads  # the plain loop decodes in the batch
    assert decoded_on and set(decoded_on) == {"recognize-prefetch"}  # with prefetch, all ahead on the thread


# -- the stages' inputs made ahead (Stage.prepare, recognize.prefetch.prepare_for) ----------------
class _Resizing(Stage):
    """A stage whose input is the image halved: made ahead by `prepare`, taken by `process`."""

    name = "halving"
    kind = "filter"

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.key = "broken half" if fail else "half"
        self.made_on: list[str] = []

    def _half(self, image: np.ndarray) -> np.ndarray:
        if self.fail:
            raise ValueError("cannot halve")
        self.made_on.append(threading.current_thread().name)
        return image[::2, ::2]

    def prepare(self, frame: Frame) -> None:
        frame.prepare_ahead(self.key, self._half)

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            frame.meta["half"] = list(frame.prepared(self.key, self._half).shape)
        return frames


class _Plain(Stage):
    name = "plain"
    kind = "filter"

    def process(self, frames: list[Frame]) -> list[Frame]:
        return frames


def test_prepare_for_decodes_then_runs_each_loaded_stage_that_prepares(files, tmp_path, caplog):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    good, failing, loading = _Resizing(), _Resizing(fail=True), _Resizing()
    for stage in (good, failing):
        stage.ensure_loaded()
    prepare = prepare_for([_Plain(), failing, loading, good])
    frame, other, broken = Frame(source=str(files[0])), Frame(source=str(files[1])), Frame(source=str(bad))
    with caplog.at_level("WARNING", logger="recognize.prefetch"):
        prepare(frame)
        prepare(other)
        prepare(broken)  # an unreadable frame: decoding fails quietly, no stage prepares it
    assert frame._image is not None and list(frame._prepared) == ["half"]  # the failing stage kept nothing
    assert good.made_on == [threading.current_thread().name] * 2
    assert loading.made_on == []  # a stage still loading is left to make its input itself
    assert broken._prepared == {}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "could not prepare" in warnings[0] and "cannot halve" in warnings[0]  # once
    with pytest.raises(ValueError, match="cannot halve"):  # the stage meets its error where errors are handled
        failing.process([frame])


def test_the_local_engine_resizes_ahead_on_the_prefetch_thread_with_the_same_results(files):
    from recognize.engines.local import LocalEngine
    from recognize.pipeline import Pipeline

    def run(depth: int) -> tuple[list, list[str], list[dict]]:
        stage = _Resizing()
        pipeline = Pipeline([stage, _Plain()], batch_size=2)
        engine = LocalEngine(prefetch=depth)
        engine.load(pipeline)  # as `recognize run` does: the first stage is loaded before the images
        frames = [Frame(source=str(p), name=p.stem) for p in files]
        results = list(engine.run(pipeline, frames))
        return [r.frame.meta["half"] for r in results], stage.made_on, [r.frame._prepared for r in results]

    plain, made_in_batch, _ = run(0)
    ahead, made_ahead, left = run(1)
    assert plain == ahead == [[(20 + i + 1) // 2, 15, 3] for i in range(5)]
    assert set(made_in_batch) == {threading.current_thread().name}  # no prefetch: made in the stage's call
    assert made_ahead == ["recognize-prefetch"] * 5  # every input made ahead, none made again
    assert left == [{}] * 5  # and dropped once the batch was done


def test_the_local_engine_prepares_a_batch_on_several_threads_with_the_same_results(files, monkeypatch):
    """`RECOGNIZE_PREFETCH_WORKERS` (`auto` chooses it where the stages compute on a GPU): same outputs,
    every input made ahead on the prefetch pool's threads."""
    from recognize.engines.local import LocalEngine
    from recognize.pipeline import Pipeline

    def run(workers: str) -> tuple[list, list[str]]:
        monkeypatch.setenv(WORKERS_ENV, workers)
        stage = _Resizing()
        pipeline = Pipeline([stage, _Plain()], batch_size=3)
        engine = LocalEngine(prefetch=1)
        engine.load(pipeline)
        results = list(engine.run(pipeline, [Frame(source=str(p), name=p.stem) for p in files]))
        return [r.frame.meta["half"] for r in results], stage.made_on

    one, made_on_one = run("1")
    three, made_on_three = run("3")
    assert one == three == [[(20 + i + 1) // 2, 15, 3] for i in range(5)]
    assert made_on_one == ["recognize-prefetch"] * 5
    assert len(made_on_three) == 5 and all(name.startswith("recognize-prefetch_") for name in made_on_three)


def test_a_bad_workers_setting_stops_the_local_engine_before_any_model_loads(files, monkeypatch):
    from recognize.engines.local import LocalEngine
    from recognize.pipeline import Pipeline

    stage = _Resizing()
    monkeypatch.setattr(stage, "load", lambda: pytest.fail("a model loaded"))
    monkeypatch.setenv(WORKERS_ENV, "many")
    with pytest.raises(SettingError, match=f"{WORKERS_ENV}='many'"):
        LocalEngine(prefetch=1).load(Pipeline([stage]))
