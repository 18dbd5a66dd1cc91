"""The Ray engine: the same Pipeline on Ray, from a laptop to a cluster.

The stages are walked exactly as in the local engine (`recognize.engines.segments.walk`); only
where the work runs differs. Image-scope segments run on a pool of Ray actors
(`recognize.engines.ray_actors`), so each worker builds its stages (and loads their weights)
once, and each batch goes through the same `run_batch` as locally (same failure policy: a bad
image costs only itself, an error repeated on every image of a batch stops the run with one
message). The first segment's pool starts in `load()`, as soon as Ray is up, so the workers
load their models while the driver prepares the run. A dataset-scope stage that partitions its
work (`Stage.partitioned`, e.g. `region_outliers` per tag) runs as a Ray Data group-by on
workers (`recognize.engines.ray_partition`), with the same result as locally; any other
dataset-scope stage runs on the driver over every frame, as in the local engine. Frames travel
as their JSON; workers read the images themselves, so the image files must be reachable from
every node (a shared filesystem or object store mount).

Point it at a cluster with `RAY_ADDRESS=ray://head:10001 recognize run ... --engine ray`
(or `ray.init(...)` yourself before calling; `RAY_ADDRESS=auto` joins one that `ray start` left running on
this machine); without one, a new local Ray instance is started (with a one-line warning where Ray
records one that `ray start` started), whose workers compute at this process's priority on one heap
each (`recognize.engines.ray_actors.actor_env`; `RayEngine.start`).
Stage and load seconds in the timings are summed over workers; a worker's decoding counts as `decode` only
where the worker waited for it, the rest as `overlapped.decode` (`recognize.engines.ray_actors`).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from unittest import mock
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recognize.engines.base import FrameResult, ResultCallback
from recognize.engines.batches import apply_stages
from recognize.engines.frame_spool import FrameSpool
from recognize.engines.ray_actors import StagePool, actor_env, specs_key
from recognize.engines.segments import Segment, split_segments, walk
from recognize.engines.timing import LOAD, STARTUP, StageTimer
from recognize.errors import SettingError
from recognize.frame import Frame
from recognize.stage import Stage

if TYPE_CHECKING:  # pragma: no cover
    from recognize.pipeline import Pipeline

#: settings of the driver's own, not passed to workers
_DRIVER_ONLY = ("RECOGNIZE_RAY_WORKERS", "RECOGNIZE_RAY_THREADS", "RECOGNIZE_RAY_CPUS", "RECOGNIZE_RAY_GPUS",
                "RECOGNIZE_SERVE_TOKEN")
#: (GCS address, node id) of the local Ray this process started with the workers' environment in its own
_INHERITING: tuple[str, str] | None = None
_START_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def _ray_start_cluster() -> str | None:
    """The address of the cluster `ray start` last started on this machine (Ray's own record in its
    default temp dir, which `ray stop` removes but a crash leaves; what `RAY_ADDRESS=auto` joins), or
    None. Ray has no public call for it, so the lookup is read defensively: a Ray that moved it gives
    None, never an error."""
    try:
        from ray._private.services import find_bootstrap_address

        return find_bootstrap_address(None) or None
    except Exception:
        return None


def worker_settings() -> dict[str, str]:
    """This process's recognize settings (`RECOGNIZE_*`, less the driver's own), for workers that do
    not inherit its environment."""
    return {key: value for key, value in os.environ.items()
            if key.startswith("RECOGNIZE_") and key not in _DRIVER_ONLY}


def _identity() -> tuple[str, str]:
    import ray

    context = ray.get_runtime_context()
    return context.gcs_address, context.get_node_id()


def _workers_inherit_env() -> bool:
    """Whether the Ray this process is connected to is the local one it started with the workers'
    environment (`RayEngine.start`); a Ray started any other way needs it set on each worker."""
    import ray

    return _INHERITING is not None and ray.is_initialized() and _identity() == _INHERITING


def _without(env: dict[str, str], given: dict[str, str]) -> dict[str, str]:
    """`env` less the variables the job's own `runtime_env` already sets (`given`): those stand (Ray
    refuses a driver's `runtime_env` that repeats one of a submitted job's, and an actor's would
    override the user's)."""
    return {key: value for key, value in env.items() if key not in given}


def _submitted_job_env() -> dict[str, str]:
    """The env_vars of the job `ray job submit` runs this driver in (none outside Ray Jobs)."""
    import json

    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        return dict((config.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


def stage_specs(stages: list[Stage]) -> list[dict[str, Any]]:
    """How a worker rebuilds `stages` from the registry (stages travel by name and parameters)."""
    from recognize.plugins import name_for

    return [{"use": name_for(type(stage)), "with": stage.params.model_dump(mode="json")} for stage in stages]


def _trimmed_at_end(results: Iterator[FrameResult]) -> Iterator[FrameResult]:
    """`results`, then the heap trimmed (`recognize.heap`): stages that run in this process (the
    dataset stages between the workers' segments) keep freed memory for reuse until the run ends, as
    in the local engine; a process that drives many runs (a notebook, a service) gets it back. Weights
    may be packed again (`batches.end_of_run_memory`)."""
    from recognize.engines.batches import end_of_run_memory

    try:
        yield from results
    finally:
        end_of_run_memory()


class RayEngine:
    name = "ray"

    def __init__(self, num_workers: int | None = None, address: str | None = None,
                 num_cpus_per_worker: float | None = None, num_gpus_per_worker: float | None = None,
                 progress: bool = False) -> None:
        """`num_cpus_per_worker` / `num_gpus_per_worker`: what Ray reserves for each worker (defaults: the
        `RECOGNIZE_RAY_CPUS` / `RECOGNIZE_RAY_GPUS` settings, else 1 CPU and no GPU). Why settings: a
        `recognize run --engine ray` on a GPU cluster has no other way to give each worker a GPU."""
        self.num_workers = num_workers or int(os.environ.get("RECOGNIZE_RAY_WORKERS", "1"))
        self.address = address or os.environ.get("RAY_ADDRESS")
        from recognize.hub import env_number

        cpus, gpus = num_cpus_per_worker, num_gpus_per_worker  # 0.5 GPU: two workers share one
        self.num_cpus_per_worker = env_number("RECOGNIZE_RAY_CPUS", 1.0, allow_zero=True) if cpus is None else cpus
        self.num_gpus_per_worker = env_number("RECOGNIZE_RAY_GPUS", 0.0, allow_zero=True) if gpus is None else gpus
        self.progress = progress
        #: actor pools started ahead of their segment (by `load`), by their stages' specs
        self._started: dict[str, StagePool] = {}

    def worker_threads(self) -> int | None:
        """torch threads per worker: `$RECOGNIZE_RAY_THREADS`, else on a local Ray instance this
        machine's cores shared among the workers (as the local engine uses them all); on a cluster
        (any address but `local`, `auto` too) Ray's own per-actor setting (its CPU reservation) stands."""
        value = os.environ.get("RECOGNIZE_RAY_THREADS", "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise SettingError(f"RECOGNIZE_RAY_THREADS={value!r}: give a whole number of threads, 1 or more")
            return int(value)
        if self._joins_a_cluster():
            return None
        return max(1, (os.cpu_count() or 1) // self.num_workers)

    def load(self, pipeline: Pipeline, timer: StageTimer | None = None) -> None:
        """Check (or download) every stage's model files, start (or connect to) Ray, then start the
        first image segment's workers, which load their models in the background. Models load in
        the workers, once each, not on the driver; the files are checked here because the workers
        read them from the same (shared) filesystem, so missing weights are one line before Ray
        starts, as with the local engine."""
        from recognize.hub import ensure_files
        from recognize.prefetch import workers_setting

        workers_setting()  # the workers read it: a bad value is one line here, not an error in every worker
        timer = timer if timer is not None else pipeline.timer
        with timer.phase(LOAD):
            ensure_files([ref for stage in [*pipeline.stages, *pipeline.outputs] for ref in stage.model_files()])
        with timer.phase(STARTUP):
            self.start()
            first = split_segments(pipeline.stages)[0]
            if first.scope == "image":
                specs = stage_specs(first.stages)
                if specs_key(specs) not in self._started:
                    self._started[specs_key(specs)] = self._pool(specs)

    def _pool(self, specs: list[dict[str, Any]]) -> StagePool:
        return StagePool(specs, workers=self.num_workers, threads=self.worker_threads(),
                         num_cpus=self.num_cpus_per_worker, num_gpus=self.num_gpus_per_worker,
                         env=self.worker_env())

    def worker_env(self) -> dict[str, str] | None:
        """Variables set on each worker (actors, Ray Data's): this process's recognize settings and
        `actor_env`; None on the local Ray this engine started, whose workers inherit them."""
        import ray

        if _workers_inherit_env():
            return None
        given = dict((ray.get_runtime_context().runtime_env or {}).get("env_vars") or {})
        return _without({**worker_settings(), **actor_env(local=False)}, given)

    def _joins_a_cluster(self) -> bool:
        return bool(self.address) and self.address != "local"

    def start(self) -> None:
        """Start Ray as a run does (nothing if it is up already). On a cluster (`address`) its
        workers get this process's recognize settings (`worker_settings`, `PYTHONPATH`) and
        `actor_env` through the job's `runtime_env` (less what a submitted job's sets already).
        Without one, a new local instance starts with those in this process's environment while
        `ray.init` runs, so that its processes inherit
        them (Ray's own too: its GCS and raylet run with `MALLOC_ARENA_MAX=1`) and its prestarted
        workers can serve the actors (`recognize.engines.ray_actors`: a job with a `runtime_env`
        gets none). Ray stays up for this process's later work, with those settings."""
        import ray

        global _INHERITING
        with _START_LOCK:
            if ray.is_initialized():
                return
            _INHERITING = None
            options: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False,
                                       "include_dashboard": False}
            if self._joins_a_cluster():
                paths = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
                env_vars = _without({**worker_settings(), **paths, **actor_env(local=False)}, _submitted_job_env())
                ray.init(address=self.address, runtime_env={"env_vars": env_vars} if env_vars else None, **options)
                return
            # a new instance, even where `ray start` left one running on this machine (whose processes
            # would not inherit anything from here): said once, as this Ray stays up for later runs
            recorded = None if self.address else _ray_start_cluster()  # an explicit "local" asked for a new one
            if recorded:
                log.warning("Ray's record names a cluster that `ray start` started on this machine (%s); this "
                            "run starts its own Ray (if that cluster still runs, RAY_ADDRESS=auto runs on it)",
                            recorded)
            # set only while Ray starts, the old values back even if it fails (stdlib's patch.dict)
            with mock.patch.dict(os.environ, actor_env(local=True)):
                ray.init(address="local", **options)
            _INHERITING = _identity()

    def run(
        self,
        pipeline: Pipeline,
        frames: Iterable[Frame],
        *,
        on_result: ResultCallback | None = None,
        checkpoint_dir: Path | None = None,
        timer: StageTimer | None = None,
    ) -> Iterator[FrameResult]:
        """See `recognize.engines.base.Engine.run`. With no frames (a resumed run with every image
        done) nothing starts: `load` would start workers that load their models for nothing."""
        timer = timer if timer is not None else pipeline.timer
        frames = iter(frames)
        first = next(frames, None)
        if first is None:
            return iter(())
        frames = itertools.chain([first], frames)
        self.load(pipeline, timer)
        return _trimmed_at_end(walk(pipeline, frames, self, timer=timer, on_result=on_result,
                                    checkpoint_dir=checkpoint_dir, progress=self.progress))

    # -- SegmentRunner --------------------------------------------------------------------
    def map_images(self, pipeline: Pipeline, segment: Segment, frames: Iterable[Frame],
                   timer: StageTimer) -> Iterator[FrameResult]:
        from recognize.prefetch import batched

        specs = stage_specs(segment.stages)
        pool = self._started.pop(specs_key(specs), None) or self._pool(specs)
        try:
            yield from pool.map(batched(frames, max(1, pipeline.batch_size)), timer)
        finally:
            pool.close()  # its CPUs (and models' memory) go to the next segment

    def run_dataset(self, pipeline: Pipeline, segment: Segment, frames: FrameSpool,
                    timer: StageTimer) -> Iterator[Frame]:
        """A partitioned stage runs as a group-by on workers, its frames streamed from and back to
        disk (`FrameSpool`), so the driver holds none of them; any other one on the driver."""
        from recognize.engines.ray_partition import run_partitioned_on_ray

        current: Iterable[Frame] = frames
        scratch: list[FrameSpool] = []
        try:
            for i, stage in enumerate(segment.stages):
                if i:  # the previous stage's output, spooled, is the next one's input
                    scratch.append(FrameSpool().extend(current, like=frames))
                    current = scratch[-1]
                if stage.partitioned:
                    with timer.stage(stage.name):
                        out = run_partitioned_on_ray(
                            stage, stage_specs([stage])[0], current, num_workers=self.num_workers,
                            num_cpus_per_worker=self.num_cpus_per_worker,
                            num_gpus_per_worker=self.num_gpus_per_worker, env=self.worker_env())
                    current = _timed(out, timer, stage.name)
                    continue
                with timer.phase(LOAD):
                    stage.ensure_loaded()
                current = apply_stages([stage], list(current), timer, chained=len(segment.stages) > 1)
            yield from current
        finally:
            for spool in scratch:
                spool.close()


def _timed(frames: Iterator[Frame], timer: StageTimer, name: str) -> Iterator[Frame]:
    """`frames`, the time spent producing each counted to stage `name` (the group-by's results stream)."""
    while True:
        with timer.stage(name):
            frame = next(frames, None)
        if frame is None:
            return
        yield frame
