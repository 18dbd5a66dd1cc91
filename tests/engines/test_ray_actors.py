"""A StageActor (the Ray engine's worker), run in this process: its calls decode one batch at a
time while the previous batch computes (a wait for the decode lock not timed as decoding), give the
local engine's outputs, count as `decode` only the decoding the worker waited for (the rest is
`overlapped`), and compute every batch on one thread of their own."""

import functools
import threading
import time

import pytest

pytest.importorskip("ray")

from recognize import prefetch as prefetch_module  # the decode step prepares frames with its prepare_for
from recognize.engines import ray_actors
from recognize.engines.ray_actors import StageActor
from recognize.engines.timing import DECODE, StageTimer
from recognize.frame import Frame
from recognize.pipeline import Pipeline


def test_two_calls_decode_one_batch_at_a_time_and_give_the_local_outputs(test_stages, image_folder, monkeypatch):
    paths = sorted(p for p in image_folder.rglob("*") if p.suffix in (".png", ".jpg"))
    decoding, most = [0], [0]
    decoded = [0]  # a clock that ticks once per image decoded: a phase's seconds = images decoded meanwhile
    lock = threading.Lock()
    both_called = threading.Barrier(2, timeout=30)
    real_decode = prefetch_module.decode

    def counting_decode(frame):
        with lock:
            decoding[0] += 1
            most[0] = max(most[0], decoding[0])
        try:
            time.sleep(0.05)  # long enough that two unserialised calls would surely overlap here
            real_decode(frame)
        finally:
            with lock:
                decoding[0] -= 1
                decoded[0] += 1

    monkeypatch.setattr(prefetch_module, "decode", counting_decode)
    monkeypatch.setattr(ray_actors, "StageTimer", functools.partial(StageTimer, clock=lambda: decoded[0]))
    specs = [{"use": "brightness", "with": {}}, {"use": "center_box", "with": {}}]
    actor = StageActor(specs, threads=1)
    batches = [[Frame(source=str(p), name=p.name).to_json(indent=None) for p in paths[:2]],
               [Frame(source=str(p), name=p.name).to_json(indent=None) for p in paths[2:]]]
    answers = [None, None]

    def call(i):
        both_called.wait()  # the two calls start together, as two in-flight Ray calls do
        answers[i] = actor.run(batches[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert most[0] == 1  # never two images decoding at once
    # each call's decode time is its own images' decoding: the call that waited for the other's
    # decode (the lock) does not count that wait as decoding (it is the run's waiting, `other`);
    # what ran beside the load or the other batch's compute is `overlapped`, the rest `decode`
    timings = [answer["timings"] for answer in answers]
    assert [t["phases"][DECODE] + t["overlapped"][DECODE] for t in timings] == [len(batch) for batch in batches]
    got = {Frame.from_json(text).name: Frame.from_json(text) for answer in answers for text in answer["frames"]}
    assert all(error is None for answer in answers for error in answer["errors"])
    local = Pipeline([test_stages.Brightness({}), test_stages.CenterBox({})])
    for path in paths:
        expected = local(Frame(source=str(path), name=path.name))[0]
        assert got[path.name].tag_names == expected.tag_names
        assert [r.box for r in got[path.name].regions] == [r.box for r in expected.regions]


def test_a_loaded_actor_resizes_ahead_in_its_decode_step(test_stages, image_folder, monkeypatch):
    """`Stage.prepare` runs in the actor's decode step (timed as decoding), once its stages are loaded."""
    paths = sorted(p for p in image_folder.rglob("*") if p.suffix in (".png", ".jpg"))[:2]
    kept: list[list[str]] = []
    real = prefetch_module.prepare_stages

    def recording(stages, frame):
        real(stages, frame)
        kept.append([str(key) for key in frame._prepared])

    monkeypatch.setattr(prefetch_module, "prepare_stages", recording)
    actor = StageActor([{"use": "brightness", "with": {}}, {"use": "center_box", "with": {}}], threads=1)
    assert actor.loaded.wait(timeout=60) and actor.load_error is None
    answer = actor.run([Frame(source=str(p), name=p.name).to_json(indent=None) for p in paths])
    assert kept == [["brightness_mean"]] * 2  # the brightness stage's input, made before its batch ran
    assert all(error is None for error in answer["errors"])
    assert [Frame.from_json(text).tag_names for text in answer["frames"]] == [
        Pipeline([test_stages.Brightness({})])([Frame(source=str(p))])[0].tag_names for p in paths]


def test_an_actor_decodes_a_batch_on_several_threads_where_the_setting_asks(test_stages, image_folder, monkeypatch):
    """`RECOGNIZE_PREFETCH_WORKERS=3`: one thread per image of the batch in the decode step, the same outputs."""
    paths = sorted(p for p in image_folder.rglob("*") if p.suffix in (".png", ".jpg"))[:3]
    threads: list[str] = []
    real = prefetch_module.prepare_stages
    together = threading.Barrier(3, timeout=10)  # broken unless the three frames are prepared at once

    def recording(stages, frame):
        together.wait()
        real(stages, frame)
        threads.append(threading.current_thread().name)

    monkeypatch.setattr(prefetch_module, "prepare_stages", recording)
    monkeypatch.setenv("RECOGNIZE_PREFETCH_WORKERS", "3")
    actor = StageActor([{"use": "brightness", "with": {}}], threads=1)
    assert actor.loaded.wait(timeout=60) and actor.load_error is None
    answer = actor.run([Frame(source=str(p), name=p.name).to_json(indent=None) for p in paths])
    assert len(threads) == 3 and all(name.startswith("recognize-decode_") for name in threads)
    assert all(error is None for error in answer["errors"])
    assert [Frame.from_json(text).tag_names for text in answer["frames"]] == [
        Pipeline([test_stages.Brightness({})])([Frame(source=str(p))])[0].tag_names for p in paths]
    monkeypatch.setenv("RECOGNIZE_PREFETCH_WORKERS", "auto")  # a CPU stage: one thread, the call's own
    threads.clear()
    monkeypatch.setattr(prefetch_module, "prepare_stages", lambda stages, frame: threads.append(threading.current_thread().name))
    actor.run([Frame(source=str(p), name=p.name).to_json(indent=None) for p in paths])
    assert threads == [threading.current_thread().name] * 3


def test_auto_decodes_on_the_workers_cores_less_one_where_its_stages_compute_on_a_gpu(test_stages, image_folder,
                                                                                    monkeypatch):
    import recognize.stage

    paths = sorted(p for p in image_folder.rglob("*") if p.suffix in (".png", ".jpg"))[:3]
    together = threading.Barrier(3, timeout=10)  # three threads: 4 torch threads less one
    threads: list[str] = []

    def recording(stages, frame):
        together.wait()
        threads.append(threading.current_thread().name)

    monkeypatch.setattr(prefetch_module, "prepare_stages", recording)
    monkeypatch.setattr(recognize.stage, "computes_off_cpu", lambda stages: True)  # as with a stage on cuda
    monkeypatch.setenv("RECOGNIZE_PREFETCH_WORKERS", "auto")
    actor = StageActor([{"use": "brightness", "with": {}}], threads=4)
    assert actor.loaded.wait(timeout=60) and actor.load_error is None
    actor.run([Frame(source=str(p), name=p.name).to_json(indent=None) for p in paths])
    assert len(threads) == 3 and all(name.startswith("recognize-decode_") for name in threads)


def test_auto_counts_the_workers_share_of_the_cores(test_stages):
    """`auto`'s threads come from the worker's torch threads (a local instance), else from the CPUs Ray
    reserved for it; outside a Ray worker, one."""
    import ray

    assert StageActor([{"use": "brightness", "with": {}}], threads=3)._cores() == 3
    assert StageActor([{"use": "brightness", "with": {}}], threads=None)._cores() == 1
    assert not ray.is_initialized()  # asking did not start Ray


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class WaitSeen(threading.Event):
    """An Event that says (`seen`) when a thread has started waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.seen.set()
        return super().wait(timeout)


def _images(folder):
    return sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))


def _frames(paths):
    return [Frame(source=str(p), name=p.name).to_json(indent=None) for p in paths]


def test_decoding_beside_the_model_load_is_overlapped_not_decode(test_stages, image_folder, monkeypatch):
    """The first batch decodes while the worker loads its models: none of that is on the worker's
    critical path, so `decode` is 0 and the decoding seconds are `overlapped` (the parts of a
    one-worker run's summary add up to its wall time)."""
    paths = _images(image_folder)[:2]
    clock = Clock()
    release_load = threading.Event()
    real_decode, real_build = prefetch_module.decode, ray_actors.build_stages

    def slow_decode(frame):
        real_decode(frame)
        clock.now += 1.0  # each image takes one second

    def slow_build(specs):
        assert release_load.wait(timeout=30)  # the models load until the test says so
        return real_build(specs)

    monkeypatch.setattr(prefetch_module, "decode", slow_decode)
    monkeypatch.setattr(ray_actors, "build_stages", slow_build)
    monkeypatch.setattr(ray_actors, "StageTimer", functools.partial(StageTimer, clock=clock))
    actor = StageActor([{"use": "brightness", "with": {}}], threads=1)
    actor.loaded = WaitSeen()  # still unset: the load waits for `release_load`, and sets this one at its end
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(actor.run(_frames(paths))))
    thread.start()
    assert actor.loaded.seen.wait(timeout=30)  # the batch has decoded (t = 2) and waits for the models ...
    clock.now = 5.0  # ... which are loaded at t = 5
    release_load.set()
    thread.join(timeout=60)
    assert all(error is None for error in answer["errors"])
    assert answer["timings"]["phases"][DECODE] == 0.0
    assert answer["timings"]["overlapped"][DECODE] == 2.0


def test_decoding_on_an_idle_worker_is_decode(test_stages, image_folder, monkeypatch):
    """A loaded worker with nothing to compute waits for its batch's decoding: all of it is `decode`;
    a decode that began before the previous batch ended counts only from that end."""
    paths = _images(image_folder)[:2]
    clock = Clock()
    real_decode = prefetch_module.decode

    def slow_decode(frame):
        clock.now += 1.0
        real_decode(frame)

    monkeypatch.setattr(prefetch_module, "decode", slow_decode)
    monkeypatch.setattr(ray_actors, "StageTimer", functools.partial(StageTimer, clock=clock))
    actor = StageActor([{"use": "brightness", "with": {}}], threads=1)
    assert actor.loaded.wait(timeout=60) and actor.load_error is None  # free at t = 0
    clock.now = 10.0  # the driver's batch arrives later
    first = actor.run(_frames(paths))["timings"]
    assert first["phases"][DECODE] == 2.0 and first["overlapped"][DECODE] == 0.0
    actor.free_at = 13.0  # as if a batch computing from t = 12 ended at t = 13, while the next decoded
    clock.now = 11.5
    second = actor.run(_frames(paths))["timings"]  # decodes from 11.5 to 13.5: 1.5 s beside, 0.5 after
    assert second["phases"][DECODE] == 0.5 and second["overlapped"][DECODE] == 1.5


def test_every_batch_computes_on_one_thread_of_the_actor(test_stages, image_folder, monkeypatch):
    """Two calls arrive on two threads (as Ray's `max_concurrency=2` brings them); both batches compute
    on the actor's one compute thread, so torch keeps one OpenMP team (`StageActor._compute`)."""
    paths = _images(image_folder)
    computed_on: list[int] = []
    real = ray_actors.run_batch

    def recording(stages, frames, timer):
        computed_on.append(threading.get_ident())
        return real(stages, frames, timer)

    monkeypatch.setattr(ray_actors, "run_batch", recording)
    actor = StageActor([{"use": "brightness", "with": {}}], threads=1)
    callers: list[int] = []
    answers = []

    def call(batch):
        callers.append(threading.get_ident())
        answers.append(actor.run(_frames(batch)))

    threads = [threading.Thread(target=call, args=(batch,)) for batch in (paths[:2], paths[2:])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(computed_on) == 2 and len(set(computed_on)) == 1
    assert computed_on[0] not in callers
    assert all(error is None for answer in answers for error in answer["errors"])
