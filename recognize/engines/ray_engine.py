"""The Ray engine: the same Pipeline on Ray Data, from a laptop to a cluster.

Image-scope stages run as `map_batches` over an actor pool, so each worker builds its stages
(and loads their weights) once. Dataset-scope stages run on the driver over every frame, as
in the local engine. Frames travel as their JSON; workers read the images themselves, so
the image files must be reachable from every node (a shared filesystem or object store mount).

Point it at a cluster with `RAY_ADDRESS=ray://head:10001 recognize run ... --engine ray`
(or `ray.init(...)` yourself before calling); without one, a local Ray instance is started.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from recognize.engines.local import FrameResult, LocalEngine, run_dataset_segment
from recognize.engines.segment_store import SegmentStore
from recognize.frame import Frame
from recognize.pipeline import Pipeline
from recognize.stage import Stage


class _StageWorker:
    """A Ray Data actor: builds the given image-scope stages once, then processes batches."""

    def __init__(self, specs: list[dict[str, Any]], batch_size: int) -> None:
        from recognize import plugins

        stages = [plugins.get_stage(spec["use"])(spec["with"]) for spec in specs]
        self.pipeline = Pipeline(stages, batch_size=batch_size)
        self.engine = LocalEngine()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = [_frame_from_json(text) for text in batch["frame"]]
        before = dict(self.pipeline.timings)
        results = list(self.engine._batch(self.pipeline, self.pipeline.stages, frames, None))
        spent = {k: v - before.get(k, 0.0) for k, v in self.pipeline.timings.items()}
        share = json.dumps({k: v / max(len(results), 1) for k, v in spent.items()})
        return {
            "frame": np.array([r.frame.to_json(indent=None) for r in results], dtype=object),
            "error": np.array([r.error or "" for r in results], dtype=object),
            "timings": np.array([share] * len(results), dtype=object),
        }


def _frame_from_json(text: str) -> Frame:
    return Frame.from_json(text)


class RayEngine:
    name = "ray"

    def __init__(self, num_workers: int | None = None, address: str | None = None,
                 num_cpus_per_worker: float = 1, num_gpus_per_worker: float = 0) -> None:
        self.num_workers = num_workers or int(os.environ.get("RECOGNIZE_RAY_WORKERS", "1"))
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.num_cpus_per_worker = num_cpus_per_worker
        self.num_gpus_per_worker = num_gpus_per_worker

    def _init(self) -> None:
        import ray

        if ray.is_initialized():
            return
        env_vars = {k: os.environ[k] for k in ("RECOGNIZE_PLUGINS", "RECOGNIZE_LOAD_PLUGINS", "PYTHONPATH",
                                                "RECOGNIZE_HOME", "RECOGNIZE_OFFLINE", "RECOGNIZE_MAX_PIXELS")
                    if k in os.environ}
        ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False,
                 include_dashboard=False, runtime_env={"env_vars": env_vars} if env_vars else None)

    def run(
        self,
        pipeline: Pipeline,
        frames: Iterable[Frame],
        on_result: Callable[[FrameResult], None] | None = None,
        checkpoint_dir: Path | None = None,
    ) -> Iterator[FrameResult]:
        """Same contract as `LocalEngine.run`."""
        self._init()
        rows = [{"frame": f.to_json(indent=None)} for f in frames]
        if not rows:
            return
        segments = [(scope, list(group)) for scope, group in groupby(pipeline.stages, key=lambda s: s.scope)]
        failed: list[FrameResult] = []
        current: list[Frame] | None = None
        for index, (scope, stages) in enumerate(segments):
            last = index == len(segments) - 1
            if scope == "dataset":
                survivors = current if current is not None else [Frame.from_json(r["frame"]) for r in rows]
                survivors = run_dataset_segment(pipeline, stages, survivors,
                                                SegmentStore(None if last else checkpoint_dir, index))
                current = survivors
                rows = [{"frame": f.to_json(indent=None)} for f in survivors]
                continue
            kept: list[Frame] = []
            store = SegmentStore(None if last else checkpoint_dir, index)
            pending, reused = [], []
            for row in rows:
                frame = Frame.from_json(row["frame"])
                done = store.load(frame)
                (pending if done is None else reused).append(row if done is None else done)
            kept.extend(reused)
            for result in self._map(pipeline, stages, pending):
                if result.ok:
                    if not last:
                        store.save(result.frame)
                    kept.append(result.frame)
                    if last and on_result is not None:
                        on_result(result)
                    if last:
                        yield result
                else:
                    failed.append(result)
                    if on_result is not None:
                        on_result(result)
                    yield result
            current = kept
            rows = [{"frame": f.to_json(indent=None)} for f in kept]
        if segments[-1][0] == "dataset":
            for frame in current or []:
                result = FrameResult(frame)
                if on_result is not None:
                    on_result(result)
                yield result

    def _map(self, pipeline: Pipeline, stages: list[Stage], rows: list[dict[str, str]]) -> Iterator[FrameResult]:
        if not rows:
            return
        import ray.data

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        specs = [{"use": s.name, "with": s.params.model_dump(mode="json")} for s in stages]
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * self.num_workers)))
        mapped = dataset.map_batches(
            _StageWorker,
            fn_constructor_kwargs={"specs": specs, "batch_size": pipeline.batch_size},
            batch_size=pipeline.batch_size,
            concurrency=self.num_workers,
            num_cpus=self.num_cpus_per_worker,
            num_gpus=self.num_gpus_per_worker or None,
            batch_format="numpy",
        )
        for row in mapped.iter_rows():
            for name, seconds in json.loads(row["timings"]).items():
                pipeline.timings[name] += seconds
            yield FrameResult(Frame.from_json(row["frame"]), row["error"] or None)
