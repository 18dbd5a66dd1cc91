"""A partitioned dataset-scope stage as a Ray Data group-by (see `recognize.engines.partition`).

1. `partition` runs in an actor pool (each actor builds and loads the stage once) over the frames'
   JSON, a chunk of frames per call, and emits one row per item: key, frame position, item index
   and the pickled item. The items (e.g. crop embeddings) stay in the object store.
2. `groupby(key).map_groups` runs `process_group` on workers, each group's items sorted into
   dataset order first, so a group sees exactly what `run_partitioned` gives it in one process.
3. The results (small: e.g. keep/drop and a distance per region) come back sorted by frame and
   are applied to each frame with `apply_results` as they stream in.

Workers lost mid-way cost only their in-flight batch: Ray Data restarts a dead actor and
retries its batch, and retries a lost group task; the steps are deterministic, so a retried
batch or group gives the same items and results.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Iterator, Sized
from itertools import islice
from typing import Any

import numpy as np

from recognize.engines.base import RunStopped
from recognize.engines.partition import PARTITION_CHUNK, check_group, check_partition
from recognize.errors import RecognizeError
from recognize.frame import Frame
from recognize.stage import Stage

_INDEX_BITS = 20  # sort key = frame position << 20 | item index (a frame has < 10^6 items)


def _build(spec: dict[str, Any]) -> Stage:
    from recognize import plugins

    return plugins.get_stage(spec["use"])(spec["with"])


#: key and position of the row a `_Partitioner` whose stage could not load emits instead of items: it
#: sorts first, so the driver stops the run with its one-line message (`_apply_in_order`)
_STOPPED_KEY, _STOPPED_POS = "\x00recognize:stopped", -1


class _Partitioner:
    """Ray Data actor: step 1 for a batch of frames.

    A stage that cannot load (a corrupt checkpoint) is not raised from `__init__`: Ray would retry the
    actor, then show its multi-line traceback. As `ray_actors.StageActor` does, the error travels
    back as data (one row per batch) and the driver raises it once, as one line with its exit code."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.stage = _build(spec)
        self.stopped: tuple[str, int] | None = None
        try:
            self.stage.ensure_loaded()
        except RecognizeError as exc:
            self.stopped = (str(exc), exc.exit_code)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.stopped is not None:
            return {"key": np.array([_STOPPED_KEY], dtype=object), "pos": np.array([_STOPPED_POS], dtype=np.int64),
                    "idx": np.array([0], dtype=np.int64),
                    "item": np.array([pickle.dumps(self.stopped)], dtype=object)}
        frames = [Frame.from_json(text) for text in batch["frame"]]
        per_frame = self.stage.partition(frames)
        check_partition(self.stage, frames, per_frame)
        keys, positions, indices, items = [], [], [], []
        for position, found in zip(batch["pos"], per_frame):
            for index, (key, item) in enumerate(found):
                keys.append(str(key))
                positions.append(int(position))
                indices.append(index)
                items.append(pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
        return {"key": np.array(keys, dtype=object), "pos": np.array(positions, dtype=np.int64),
                "idx": np.array(indices, dtype=np.int64), "item": np.array(items, dtype=object)}


def _process_group(group: dict[str, np.ndarray], spec: dict[str, Any]) -> dict[str, np.ndarray]:
    """Ray Data group function: step 2 for one key."""
    key = str(group["key"][0])
    if key == _STOPPED_KEY:  # the stage could not load: pass its error on, once
        return {"pos": group["pos"][:1], "order": group["pos"][:1], "result": group["item"][:1]}
    stage = _build(spec)
    order = np.lexsort((group["idx"], group["pos"]))  # dataset order, as in one process
    items = [pickle.loads(group["item"][i]) for i in order]
    results = stage.process_group(key, items)
    check_group(stage, key, items, results)
    return {"pos": group["pos"][order], "order": (group["pos"][order] << _INDEX_BITS) + group["idx"][order],
            "result": np.array([pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in results], dtype=object)}


def frames_dataset(frames: Iterable[Frame], block: int = 4096) -> Any:
    """A Ray Dataset of `{pos, frame}` rows (the frames' JSON), put into the object store a block at a
    time as `frames` is read, so the driver never holds every frame, nor a serialised copy of them;
    None when there are no frames."""
    import pyarrow as pa
    import ray

    refs, start = [], 0
    iterator = iter(frames)
    while part := list(islice(iterator, block)):
        refs.append(ray.put(pa.table({
            "pos": pa.array(range(start, start + len(part)), type=pa.int64()),
            "frame": pa.array([frame.to_json(indent=None) for frame in part], type=pa.large_string()),
        })))
        start += len(part)
    return ray.data.from_arrow_refs(refs) if refs else None


def run_partitioned_on_ray(stage: Stage, spec: dict[str, Any], frames: Sized | Iterable[Frame], *,
                           num_workers: int, num_cpus_per_worker: float = 1,
                           num_gpus_per_worker: float = 0, env: dict[str, str] | None = None) -> Iterator[Frame]:
    """The stage over `frames` as a group-by on the current Ray instance; same result as locally.
    `env`: variables set on its workers (None where they inherit the driver's, `RayEngine`).

    `frames` is read twice, in order (a `FrameSpool` or a list): once into the object store, once
    to apply each frame's results as they stream back; the enriched frames are yielded in order."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    count = len(frames)  # type: ignore[arg-type]
    remote_args = {"runtime_env": {"env_vars": env}} if env else {}
    source = frames_dataset(frames, block=4 * PARTITION_CHUNK)
    if source is None:
        return iter(())
    items = source.map_batches(
        _Partitioner, fn_constructor_kwargs={"spec": spec}, batch_size=PARTITION_CHUNK,
        compute=ray.data.ActorPoolStrategy(size=num_workers), num_cpus=num_cpus_per_worker,
        num_gpus=num_gpus_per_worker or None, batch_format="numpy", **remote_args,
    ).materialize()
    if items.count() == 0:
        return (stage.apply_results(frame, []) for frame in frames)
    # few shuffle partitions: a group must fit one worker anyway, and each partition costs tasks
    parts = max(1, min(4 * num_workers, count // PARTITION_CHUNK + 1))
    results = items.groupby("key", num_partitions=parts).map_groups(
        _process_group, fn_kwargs={"spec": spec}, batch_format="numpy", num_cpus=num_cpus_per_worker, **remote_args)
    step = count / parts
    boundaries = [int(i * step) << _INDEX_BITS for i in range(1, parts)]
    ordered = results.sort("order", boundaries=boundaries or None)
    return _apply_in_order(stage, iter(frames), ordered.iter_rows())


def _apply_in_order(stage: Stage, frames: Iterator[Frame], rows: Iterator[dict[str, Any]]) -> Iterator[Frame]:
    """Each frame with its results (rows sorted by frame position), frames read one at a time."""
    position, mine = 0, []
    for row in rows:
        if row["pos"] == _STOPPED_POS:
            message, code = pickle.loads(row["result"])
            stopped = RunStopped(message)
            stopped.exit_code = code
            raise stopped
        while position < row["pos"]:
            yield stage.apply_results(next(frames), mine)
            position, mine = position + 1, []
        mine.append(pickle.loads(row["result"]))
    for frame in frames:
        yield stage.apply_results(frame, mine)
        mine = []
