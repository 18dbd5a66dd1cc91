"""Image-scope segments on a pool of plain Ray actors (`StagePool`).

Each actor builds the segment's stages and loads their models once, in a background thread
started by its constructor, so the first batch's images decode while the models load; it runs
two calls at a time (`max_concurrency=2`) and one batch at a time through the stages, all on
one compute thread of its own (one OpenMP team: `StageActor._compute`), so the next batch decodes
while the current one computes, as the local engine's `prefetch` does. Each batch goes through
the same `run_batch` as locally (same failure policy). Frames travel as their JSON; workers read
the images themselves.

Why plain actors, not Ray Data's `map_batches` (what this engine used until 2026-12-01): for an
image-scope segment Ray Data only adds fixed costs on the critical path. Its streaming executor
started the actor 3.6-4.8 s into the run (on a loaded 2-core machine), the actor then imported
`ray.data` (pyarrow, pandas) besides torch, and it loaded the models only on the first batch,
after decoding that batch: the first batch computed ~9 s later than the local engine's would,
against ~4-5 s with this pool (benchmarks/results_standalone.md, "Ray engine: plain actors instead of Ray
Data for image stages"). A pool is started by `RayEngine.load()`,
as soon as Ray is up, so the workers' start-up and model loading overlap the driver's own
preparation. The dataset-scope group-by stays on Ray Data (`recognize.engines.ray_partition`),
where its shuffle is the point.

Each actor's process starts with this environment (`actor_env`): inherited from the driver where the
engine started a local Ray itself (`recognize.engines.ray_engine`), set on each actor otherwise (the
user's own `ray.init`, a cluster), so it holds however Ray was started:
- `MALLOC_ARENA_MAX=1` (`recognize.heap.worker_env`), everywhere: the actor computes on a thread other
  than its process's main one (its compute thread), and without it glibc gave such a thread an arena
  of its own, whose large blocks are mmapped and unmapped again on every free. Measured (ram_plus, 4 photos a batch, AMD EPYC
  2 cores, 2026-12-02): ~210,000 page faults and 11.3-11.6 s per batch, against none and 10.9-11.0 s
  with it. Until then only a Ray instance this engine started itself passed it to its workers.
- `RAY_worker_niceness=0`, on the local instance the engine starts: Ray raises its workers' niceness
  by 15 (that variable is the increment), so that its own processes stay responsive on loaded cluster
  nodes; the local engine computes at the priority it was started with. With one busy process beside
  it (any other work on the machine, a browser), a batch took 24.7 s at +15 and 18.6 s at +0 (the local
  engine: 19.3 s); on an idle machine the same within noise. On a Ray started any other way (a cluster,
  the user's own `ray.init`) Ray's setting stands.
Why not always set on the actor: Ray then starts a process for it (~1.05 s to the actor's constructor)
where a local instance has one prestarted (~0.2 s), as it only does for jobs without a `runtime_env`.

Timings: each batch's answer carries its seconds (`StageTimer.to_dict`), merged into the run's
`summary.json` on the driver. A batch's decoding (and resizing) counts under `decode` only from the
moment the worker was free to compute it (its models loaded, the previous batch done); what ran
before that, beside the model load or the previous batch's compute, goes to `overlapped.decode`, as
the local engine's prefetch thread is not counted either. Until 2026-12-03 all of it counted, so a
one-worker run's parts added up to ~2 s more than its wall time (a run of 8 photos, RAM++, before the
change: decode 2.2 s, run 28.9 s, `other` 0).

Fault tolerance is Ray's: an actor whose process dies is restarted (its models reloaded) and
its unfinished calls are retried, up to `RETRIES` times; past that the run stops with one line.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from recognize import heap, thread_priority
from recognize.engines.base import FrameResult, RunStopped, describe_error
from recognize.engines.batches import run_batch
from recognize.engines.timing import DECODE, LOAD, STARTUP, StageTimer
from recognize.errors import RecognizeError
from recognize.frame import Frame
from recognize.prefetch import prepare_for, workers_for

#: restarts of a dead actor and retries of its unfinished calls (a node lost, a process killed for
#: memory); an image that kills its worker every time stops the run after these
RETRIES = 3
#: calls queued per actor: the one computing and the next one, decoding meanwhile
IN_FLIGHT = 2
#: Ray's setting of its workers' niceness (module doc)
NICENESS_ENV = "RAY_worker_niceness"


def actor_env(local: bool) -> dict[str, str]:
    """Environment variables of a worker's process, in effect from its start (module doc): a mallopt
    or os.nice call inside it would come too late, or need privileges. `local`: the workers run on the
    local Ray instance the engine started (they compute at the driver's priority)."""
    return {**heap.worker_env(), **({NICENESS_ENV: "0"} if local else {})}


def build_stages(specs: list[dict[str, Any]]) -> list:
    from recognize import plugins

    return [plugins.get_stage(spec["use"])(spec["with"]) for spec in specs]


class StageActor:
    """One worker of a `StagePool` (a Ray actor class: `ray.remote(StageActor)`)."""

    def __init__(self, specs: list[dict[str, Any]], threads: int | None = None) -> None:
        self.threads = threads
        self.stages: list = []
        self.load_timer = StageTimer()  # sent back with the first batch's result
        self.clock = self.load_timer.clock
        #: when this worker was last free to compute a batch (its models loaded, or the last batch done):
        #: a batch's decoding before then ran beside the load or the compute (module doc, "Timings")
        self.free_at = 0.0
        self.load_error: BaseException | None = None
        self.loaded = threading.Event()
        #: every batch computes on this one thread, one at a time (why: `_compute`)
        self.compute_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recognize-compute")
        #: one batch decodes at a time, as the local engine's single prefetch thread does: on a
        #: small machine two decoding calls beside the model-loading thread would take cores from
        #: the load (the critical path) for a batch that is not needed before it has finished
        self.decoding = threading.Lock()
        #: (threads, pool) decoding a batch's frames at once, made on the first batch that asks for it
        self._decoders: tuple[int, ThreadPoolExecutor] | None = None
        threading.Thread(target=self._load, args=(specs,), daemon=True, name="recognize-load").start()

    def _use_threads(self) -> None:
        if self.threads is not None:
            # Ray gives an actor OMP_NUM_THREADS = its CPU reservation (1): torch would then use one
            # core where the local engine uses all of them (one worker ran at 0.47x of local on 2
            # cores). Set in every thread that runs torch: the setting is per OpenMP thread.
            import torch

            torch.set_num_threads(self.threads)

    def _load(self, specs: list[dict[str, Any]]) -> None:
        try:
            with self.load_timer.phase(STARTUP):  # the worker's imports: torch, the stages' plugins
                self._use_threads()
                self.stages = build_stages(specs)
            with self.load_timer.phase(LOAD):
                for stage in self.stages:
                    stage.ensure_loaded()
        except BaseException as exc:  # noqa: BLE001 - raised again by each call, on the driver
            self.load_error = exc
        finally:
            self.free_at = self.clock()
            self.loaded.set()

    def run(self, texts: list[str]) -> dict[str, Any]:
        """One batch (frames as JSON) through the stages: each frame's JSON and error, the batch's
        timings, and `stopped` (+ its exit code) when the run must stop (sent as data: the driver
        raises it once, as one line)."""
        frames = [Frame.from_json(text) for text in texts]
        timer = StageTimer()
        # on the call thread, before the compute thread: overlaps the previous batch's compute; the decode
        # lock is taken before the clock starts, so waiting for the other call's decode is not timed as decoding
        with self.decoding:
            began = self.clock()
            self._decode(frames)
            decoded = self.clock()
        self.loaded.wait()
        return self.compute_thread.submit(self._compute, frames, timer, began, decoded).result()

    def _decode(self, frames: list[Frame]) -> None:
        """Decode the batch's images and make the stages' resized inputs (`Stage.prepare`, for each stage
        once loaded; timed as decoding): on one thread, or on several, one frame each, where the stages compute
        on a GPU or `RECOGNIZE_PREFETCH_WORKERS` asks (`recognize.prefetch.workers_for`, with the worker's share
        of the cores: `_cores`)."""
        prepare = prepare_for(self.stages)
        workers = workers_for(self.stages, len(frames), cores=self._cores(), spare=1)
        if workers <= 1:
            for frame in frames:
                prepare(frame)
            return
        if self._decoders is None or self._decoders[0] < workers:  # one pool per actor, grown if a batch is larger
            if self._decoders is not None:
                self._decoders[1].shutdown(wait=False)
            self._decoders = (workers, ThreadPoolExecutor(workers, thread_name_prefix="recognize-decode",
                                                          initializer=thread_priority.lower_this_thread))
        for _ in self._decoders[1].map(prepare, frames):
            pass

    def _cores(self) -> int:
        """This worker's share of the cores: its torch threads where the engine set them (a local Ray
        instance), else the CPUs Ray reserved for it (`num_cpus_per_worker` on a cluster), else one."""
        if self.threads is not None:
            return self.threads
        try:
            import ray

            if not ray.is_initialized():  # a plain process: asking Ray would start it
                return 1
            return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        except Exception:  # noqa: BLE001 - Ray could not say: one, as before this setting
            return 1

    def _compute(self, frames: list[Frame], timer: StageTimer, began: float, decoded: float) -> dict[str, Any]:
        """The batch through the stages, on the compute thread (`self.compute_thread`).

        Why one thread: GNU OpenMP keeps a team of threads for each thread that starts parallel work,
        and counts all of them; with more than there are cores it stops spinning at its barriers and
        puts waiting threads to sleep (futex wake-ups on every small op). Until 2026-12-03 each batch
        computed on the Ray call thread that brought it (two, `IN_FLIGHT`): two teams, and the second
        batch ran with the cores ~10% idle. Measured (ram_plus, 8 photos, 1 worker, 2 cores, 4
        alternating rounds): the worker's stage seconds 26.2-35.2 (median 27.9) on the call threads,
        26.2-26.6 (median 26.5) on one thread (two rounds on the call threads were as fast: the gain for
        GEMM-heavy work is a few per cent at most, the variance is what went); a toy loop of small ops
        alternating between two long-lived threads took 1.26-1.30x its time on one (`benchmarks/README.md`,
        "Ray's one worker").
        """
        stopped, code = "", RunStopped.exit_code
        # decoding counts as such only after the worker was free to compute this batch; before
        # that it ran beside the model load or the previous batch (`overlapped`, as locally)
        waited = max(0.0, decoded - max(began, self.free_at))
        timer.phases[DECODE] += waited
        timer.overlapped[DECODE] += decoded - began - waited
        if self.load_timer is not None:
            timer.merge(self.load_timer)
            self.load_timer = None
        try:
            if self.load_error is not None:
                raise self.load_error
            self._use_threads()
            results = run_batch(self.stages, frames, timer)
        except RecognizeError as exc:
            # RunStopped, or a stage that cannot load (a corrupt checkpoint: exit code 3)
            results, stopped, code = [FrameResult(frame, str(exc)) for frame in frames], str(exc), exc.exit_code
        finally:
            self.free_at = self.clock()
        return {"frames": [r.frame.to_json(indent=None) for r in results], "errors": [r.error for r in results],
                "stopped": stopped, "stopped_code": code, "timings": timer.to_dict()}


class StagePool:
    """`workers` StageActors for one segment's stages, started at once (their models load while
    the driver goes on); `map` streams batches through them, results in input order."""

    def __init__(self, specs: list[dict[str, Any]], *, workers: int, threads: int | None,
                 num_cpus: float = 1, num_gpus: float = 0, env: dict[str, str] | None = None) -> None:
        """`env`: variables set on each actor (None where the workers inherit them from the driver)."""
        import ray

        self.specs = specs
        actor = ray.remote(StageActor).options(
            num_cpus=num_cpus, num_gpus=num_gpus or None, max_concurrency=IN_FLIGHT,
            max_restarts=RETRIES, max_task_retries=RETRIES, runtime_env={"env_vars": env} if env else None)
        self.actors = [actor.remote(specs, threads) for _ in range(max(1, workers))]

    def map(self, batches: Iterable[list[Frame]], timer: StageTimer) -> Iterator[FrameResult]:
        """Each batch's FrameResults, in input order; up to `IN_FLIGHT` batches queued per actor."""
        import ray

        busy = [0] * len(self.actors)
        pending: deque[tuple[int, Any]] = deque()  # (actor index, result ref), in input order

        def oldest() -> Iterator[FrameResult]:
            index, ref = pending.popleft()
            busy[index] -= 1
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                raise RunStopped(f"a Ray worker died {RETRIES + 1} times running a batch, so the run stopped "
                                 f"(an image that crashes its process, or not enough memory): "
                                 f"{describe_error(exc).splitlines()[0]}") from None
            if answer["stopped"]:
                stopped = RunStopped(answer["stopped"])
                stopped.exit_code = int(answer["stopped_code"])
                raise stopped
            timer.merge(answer["timings"])
            for text, error in zip(answer["frames"], answer["errors"]):
                yield FrameResult(Frame.from_json(text), error or None)

        for batch in batches:
            if len(pending) >= IN_FLIGHT * len(self.actors):
                yield from oldest()
            index = min(range(len(self.actors)), key=busy.__getitem__)
            busy[index] += 1
            pending.append((index, self.actors[index].run.remote([frame.to_json(indent=None) for frame in batch])))
        while pending:
            yield from oldest()

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


def specs_key(specs: list[dict[str, Any]]) -> str:
    return json.dumps(specs, sort_keys=True)
