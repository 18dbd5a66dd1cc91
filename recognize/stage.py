"""What a stage is: a named, typed, lazily loaded step that enriches a list of Frames.

Built-in stages and third-party ones are the same kind of object, registered through the
`register_stages` / `register_outputs` hooks (see `recognize.hookspecs`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from recognize.frame import Frame

StageKind = Literal["tagger", "localizer", "segmenter", "captioner", "filter", "output"]
StageScope = Literal["image", "dataset"]
Device = Literal["auto", "cpu", "cuda", "mps"]


class StageParams(BaseModel):
    """Base for every stage's `Params`: unknown keys are errors, so typos are caught."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Stage:
    """Base class of all stages.

    Subclasses set `name`, `kind`, optionally `scope`, declare a nested `Params(StageParams)`
    and implement `process(frames)`. Heavy work (loading weights) belongs in `load()`, which
    runs once, on first use, so building a pipeline is cheap and validation errors come first.
    """

    name: ClassVar[str]
    kind: ClassVar[StageKind]
    scope: ClassVar[StageScope] = "image"
    Params: ClassVar[type[StageParams]] = StageParams

    def __init__(self, params: StageParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        if isinstance(params, StageParams):
            if kwargs:
                params = params.model_copy(update=kwargs)
            self.params = self.Params.model_validate(params.model_dump())
        else:
            self.params = self.Params.model_validate({**(params or {}), **kwargs})
        self._loaded = False
        self._load_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------
    def load(self) -> None:
        """Load weights and other heavy state. Called once, before the first `process`."""

    def ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._load_lock:
            if not self._loaded:
                self.load()
                self._loaded = True

    def process(self, frames: list[Frame]) -> list[Frame]:
        """Enrich `frames` (a batch for image-scope stages, every frame for dataset-scope ones)."""
        raise NotImplementedError

    def __call__(self, frames: list[Frame]) -> list[Frame]:
        self.ensure_loaded()
        return self.process(frames)

    # -- partition contract (dataset scope; engines: recognize.engines.partition) -------------
    # A dataset-scope stage whose work splits by a key (region_outliers: per tag) sets
    # `partitioned = True` and implements the three steps below; engines may then run it as a
    # group-by (the Ray engine: every step on workers, the driver holding only frame ids), and
    # `recognize.engines.partition.run_partitioned` runs the same steps in one process, so both
    # give the same result by construction. Items and results travel between processes
    # (pickled). A stage that leaves `partitioned` False runs over every frame at once, on one
    # machine, as before.
    #: True when the stage implements `partition` / `process_group` / `apply_results`
    partitioned: ClassVar[bool] = False

    def partition(self, frames: list[Frame]) -> list[list[tuple[str, Any]]]:
        """Per frame, the `(key, item)` pairs it contributes (e.g. `(tag, crop embedding)`).

        Runs on workers, a batch of frames at a time, after `load()`; the items of a frame must
        not depend on the other frames of the batch."""
        raise NotImplementedError(f"{self.name} does not partition its work")

    def process_group(self, key: str, items: list[Any]) -> list[Any]:
        """One result per item of the group `key`. Items come in dataset order (frame order, then
        the order `partition` gave them), whatever engine runs the stage. No `load()` is needed."""
        raise NotImplementedError(f"{self.name} does not partition its work")

    def apply_results(self, frame: Frame, results: list[Any]) -> Frame:
        """Enrich `frame` from the results of its own items, in the order `partition` gave them
        (an empty list when it contributed none). Returns the frame."""
        raise NotImplementedError(f"{self.name} does not partition its work")
    # -- end of partition contract ------------------------------------------------------------

    # -- pipeline-level defaults ---------------------------------------------------------
    def apply_defaults(self, **defaults: Any) -> None:
        """Set pipeline-wide values (device, batch size) on params the user did not set."""
        fields = type(self.params).model_fields
        for key, value in defaults.items():
            if value is not None and key in fields and key not in self.params.model_fields_set:
                setattr(self.params, key, value)
                # validate_assignment marks it as set; undo so later defaults can still apply
                self.params.model_fields_set.discard(key)

    def describe(self) -> dict[str, Any]:
        return {"use": self.name, "with": self.params.model_dump(mode="json", exclude_unset=True)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump(exclude_unset=True).items())
        return f"{type(self).__name__}({args})"


class OutputStage(Stage):
    """A stage that writes results. It never changes frames.

    `files(frame, out_dir)` names what `write` produces for one frame (a resumed run checks
    they all exist); `finish(frames, out_dir)` writes dataset-level files once all frames are
    known (e.g. one COCO file). Writes must be atomic: use `recognize.atomic.atomic_write`.
    """

    kind: ClassVar[StageKind] = "output"

    def files(self, frame: Frame, out_dir: Path) -> list[Path]:
        return []

    def write(self, frame: Frame, out_dir: Path) -> None:
        """Write the per-frame files."""

    def finish(self, frames: list[Frame], out_dir: Path) -> None:
        """Write dataset-level files (all frames of the run, resumed ones included)."""

    def process(self, frames: list[Frame]) -> list[Frame]:
        return frames


def resolve_device(device: str) -> str:
    """`auto` -> cuda if available, else mps, else cpu."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class SharedModels:
    """Process-wide pool so stages that need the same weights share one copy in memory.

    The tagger that tags images and the `region_confirm` stage that re-checks crops ask for
    the same key and get the same module.
    """

    def __init__(self) -> None:
        self._models: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, factory: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._models:
                self._models[key] = factory()
            return self._models[key]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


shared_models = SharedModels()
