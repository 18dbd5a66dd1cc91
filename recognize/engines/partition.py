"""Partitioned dataset-scope stages: one group-by, run in this process or on a cluster.

A stage with `partitioned = True` (see the partition contract in `recognize.stage.Stage`) is
three steps: `partition(frames)` gives each frame's `(key, item)` pairs, `process_group(key,
items)` decides per key (region_outliers: K-Means++ and the drop decisions of one tag), and
`apply_results(frame, results)` writes the decisions back onto each frame. `run_partitioned`
below runs them in one process; the Ray engine runs the same three steps on workers (a
`map_batches` for `partition`, a `groupby(key).map_groups` for `process_group`, results streamed
back in frame order for `apply_results`), so the driver never holds the items (the embeddings)
and both engines give the same result: groups are formed the same way and see their items in
the same, dataset, order.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from recognize.errors import RecognizeError
from recognize.frame import Frame
from recognize.stage import Stage

#: frames per `partition` call in one process (bounds decoded images in memory)
PARTITION_CHUNK = 256


def check_partition(stage: Stage, frames: list[Frame], per_frame: list[list[tuple[str, Any]]]) -> None:
    if len(per_frame) != len(frames):
        raise RecognizeError(f"stage {stage.name!r}: partition() returned items for {len(per_frame)} frames "
                             f"of {len(frames)}; it returns one list per frame, in order")


def check_group(stage: Stage, key: str, items: list[Any], results: list[Any]) -> None:
    if len(results) != len(items):
        raise RecognizeError(f"stage {stage.name!r}: process_group({key!r}) returned {len(results)} results "
                             f"for {len(items)} items; it returns one per item, in order")


def run_partitioned(stage: Stage, frames: list[Frame], chunk: int = PARTITION_CHUNK) -> list[Frame]:
    """The stage's three steps over `frames` in this process (what `process()` of such a stage does)."""
    stage.ensure_loaded()
    groups: dict[str, list[tuple[int, int, Any]]] = defaultdict(list)  # key -> (frame, item index, item)
    for start in range(0, len(frames), chunk):
        part = frames[start : start + chunk]
        per_frame = stage.partition(part)
        check_partition(stage, part, per_frame)
        for offset, items in enumerate(per_frame):
            for index, (key, item) in enumerate(items):
                groups[key].append((start + offset, index, item))
    results: dict[int, dict[int, Any]] = defaultdict(dict)
    for key in sorted(groups):
        members = groups.pop(key)
        out = stage.process_group(key, [item for _, _, item in members])
        check_group(stage, key, members, out)
        for (position, index, _), result in zip(members, out):
            results[position][index] = result
    return [stage.apply_results(frame, [mine[i] for i in sorted(mine)])
            for frame, mine in ((frame, results.get(p, {})) for p, frame in enumerate(frames))]
