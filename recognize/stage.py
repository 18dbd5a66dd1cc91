"""What a stage is: a named, typed, lazily loaded step that enriches a list of Frames.

Built-in stages and third-party ones are the same kind of object, registered through the
`register_stages` / `register_outputs` hooks (see `recognize.hookspecs`).
"""

from __future__ import annotations

import os
import re
import threading
import typing
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from recognize.errors import RecognizeError
from recognize.frame import Frame

if TYPE_CHECKING:  # pragma: no cover
    from recognize.hub import FileRef

#: What a stage does; `kind: ClassVar[StageKind] = "tagger"` in every stage; STAGE_KINDS lists them.
StageKind = Literal["tagger", "localizer", "segmenter", "captioner", "filter", "output"]
StageScope = Literal["image", "dataset"]
#: the allowed values, as registration checks them (`output` belongs to `OutputStage`s only)
STAGE_KINDS: tuple[str, ...] = typing.get_args(StageKind)
STAGE_SCOPES: tuple[str, ...] = typing.get_args(StageScope)
Device = Literal["auto", "cpu", "cuda", "mps"]


def _refuse_bool_for_number(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """pydantic's lax mode reads `true` as 1 for an int field: a recipe typo would pass as a number.
    Also inside lists and mappings of numbers (`thresholds: {cat: true}`, `tile: [true, 512]`)."""
    if info.field_name is None or not isinstance(value, (bool, list, tuple, dict)):
        return value
    leaves = _leaf_types(cls.model_fields[info.field_name].annotation)
    if leaves & {int, float} and not leaves & {bool, Any} and _holds_bool(value):
        raise ValueError("expected a number, got a boolean")
    return value


def _leaf_types(annotation: Any, depth: int = 0) -> set[Any]:
    """The scalar types an annotation is built from (`dict[str, float] | None` -> {str, float, None})."""
    if depth > 8:
        return {Any}
    if typing.get_origin(annotation) is typing.Annotated:
        return _leaf_types(typing.get_args(annotation)[0], depth + 1)
    if typing.get_origin(annotation) is typing.Literal:
        return {type(v) for v in typing.get_args(annotation)}
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    return set().union(*(_leaf_types(a, depth + 1) for a in args))


def _holds_bool(value: Any, depth: int = 0) -> bool:
    if isinstance(value, bool):
        return True
    if depth > 8:
        return False
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(_holds_bool(v, depth + 1) for v in value.values())
    return False


#: A `field_validator("*", mode="before")` that refuses booleans for int/float fields; StageParams
#: has it, other recipe models (settings) reuse it.
no_bool_for_numbers = field_validator("*", mode="before")(_refuse_bool_for_number)


class StageParams(BaseModel):
    """Base for every stage's `Params`: unknown keys are errors, so typos are caught; `true` is
    not a number."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    _no_bools = no_bool_for_numbers

    def nested_stages(self) -> dict[str, tuple[str, str]]:
        """Fields that hold another stage's parameters: {params field: (name field, stage name)}.

        A recipe validates those against that stage's `Params` when it loads (e.g. region_confirm's
        `tagger_with` against the `tagger` stage), so a typo inside them is caught before any work.
        """
        return {}


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
            # only the fields the caller set count as set: pipeline defaults (device) still apply to
            # the others, and describe()/the manifest show what was given, as with a dict
            params = params.model_dump(exclude_unset=True)
        self.params = self.Params.model_validate({**(params or {}), **kwargs})
        self._loaded = False
        self._load_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------
    def load(self) -> None:
        """Load weights and other heavy state. Called once, before the first `process`."""

    def model_files(self) -> list[FileRef]:
        """The hub files this stage needs with its current parameters (`recognize.hub.FileRef`s).

        A parameter that points at a local file replaces the hub file, which is then not listed.
        `recognize models download --recipe` fetches these, and `ensure_loaded` checks them all
        before `load()`, so an offline run names every missing file at once.
        """
        return []

    @property
    def loaded(self) -> bool:
        """Whether `load()` has run (and `unload()` not since): `ensure_loaded` would return at once."""
        return getattr(self, "_loaded", False)  # a subclass that skipped Stage.__init__ has none

    def ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._load_lock:
            if not self._loaded:
                from recognize.fast_modes import exact_float32_on_cuda
                from recognize.hub import ensure_files

                check_stage_device(self)  # before any download: a GPU that is not there fails in one line
                ensure_files(self.model_files())
                exact_float32_on_cuda(self.params)  # cuDNN's TF32 off on CUDA, before any forward (why: there)
                self.load()
                self._loaded = True

    def unload(self) -> None:
        """Drop this stage's hold on shared models (freed once no stage holds them); `load()` runs again on next use."""
        with self._load_lock:
            shared_models.release(self)
            self._loaded = False

    def process(self, frames: list[Frame]) -> list[Frame]:
        """Enrich `frames` (a batch for image-scope stages, every frame for dataset-scope ones)."""
        raise NotImplementedError

    def prepare(self, frame: Frame) -> None:
        """Make ahead what `process` will need from `frame`'s pixels alone: its model input, resized.

        The engines call it on their prefetch thread for the next batch while the current batch
        computes (`recognize.prefetch.prepare_stages`), once this stage is loaded, so a resize is not
        paid between batches. It runs in another thread than `process`, and for frames this stage may
        never see (an earlier stage failed on them), so it reads params, the pixels and the loaded
        model's settings, and changes nothing else. Where the stages compute on a GPU (or
        `RECOGNIZE_PREFETCH_WORKERS` > 1) it may run for several frames of a batch at once, on as many
        threads: it must be thread-safe (no lazily filled caches on the stage). Keep the input with
        `frame.prepare_ahead(key, make)`; `process` reads it with `frame.prepared(key, make)`, which
        makes it there when nothing was prepared. An error here is logged once and `process` meets it
        again, where errors are handled. Default: nothing.
        """

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
        """The recipe entry that rebuilds this stage (`plugin:name` when two plugins share the name)."""
        from recognize.plugins import name_for

        return {"use": name_for(type(self)), "with": self.params.model_dump(mode="json", exclude_unset=True)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump(exclude_unset=True).items())
        return f"{type(self).__name__}({args})"


class OutputStage(Stage):
    """A stage that writes results. It never changes frames.

    `files(frame, out_dir)` names what `write` produces for one frame (a resumed run checks
    they all exist); `finish(frames, out_dir)` writes dataset-level files once all frames are
    known (e.g. one COCO file). Writes must be atomic: use `recognize.atomic.atomic_write`.

    Every file has one producer: per-image files go under `OUT/frames/`
    (`recognize.outputs.paths.output_path`) or a folder the stage names in `run_files`;
    `run_files` lists the names the stage writes directly in OUT, and the runner refuses a
    recipe whose outputs (or the run itself) claim the same name.
    """

    kind: ClassVar[StageKind] = "output"
    #: An append-only output (the `shards` log) adds whole records to files it keeps open, located
    #: by the done journal, instead of writing each file atomically; a record torn by a killed run
    #: has no journal entry and is cut off by the next run. `recognize.testing` checks such an output
    #: for whole records rather than whole files.
    append_only: ClassVar[bool] = False

    def files(self, frame: Frame, out_dir: Path) -> list[Path]:
        return []

    def claims(self, frame: Frame, out_dir: Path) -> list[Path]:
        """Every per-image path this stage writes for `frame`, at `write` or at `finish`."""
        return self.files(frame, out_dir)

    def run_files(self) -> list[str]:
        """Plain names this stage writes directly in OUT (dataset files, its own folders)."""
        return []

    def write(self, frame: Frame, out_dir: Path) -> None:
        """Write the per-frame files."""

    def finish(self, frames: Sequence[Frame], out_dir: Path) -> None:
        """Write dataset-level files from every frame of the run, resumed ones included.

        `frames` is a read-only sequence that the runner reads back from the per-image results
        on disk, one frame at a time, so memory does not grow with the dataset: iterate it
        (more than once if needed) and keep only what the file needs (no pixels, masks as RLE).
        """

    def process(self, frames: list[Frame]) -> list[Frame]:
        return frames


def computes_off_cpu(stages: Iterable[Any]) -> bool:
    """Whether every stage with a device (`params.device`) computes off the CPU, at least one does. A
    CPU stage beside a GPU one takes the cores as a CPU run does, so the answer is then no. Why: the
    engine's helper threads (decoding ahead, writing outputs) get cores of their own only where the
    compute does not need them (`recognize.prefetch.workers_for`, `engines.background_write`)."""
    devices = []
    for stage in stages:
        device = getattr(getattr(stage, "params", None), "device", None)
        if device is None:
            continue
        try:
            devices.append(resolve_device(str(device)))
        except Exception:  # noqa: BLE001 - a device the stage itself refuses when it loads: not a GPU here
            devices.append("cpu")
    return bool(devices) and "cpu" not in devices


def resolve_device(device: str) -> str:
    """`auto` -> cuda if available, else mps, else cpu; `cuda` -> `cuda:<current>` (see `normalize_device`)."""
    if device != "auto":
        return normalize_device(device)
    import torch

    if torch.cuda.is_available():
        return normalize_device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


_CUDA = re.compile(r"^cuda(:\d+)?$")


def check_stage_device(stage: Stage) -> None:
    """`check_device` for a stage's `device` parameter, if it has one."""
    params = getattr(stage, "params", None)
    device = getattr(params, "device", None)
    if device is not None:
        check_device(str(device), stage.name, set_on_stage="device" in params.model_fields_set)


def check_device(device: str, who: str = "", set_on_stage: bool = False) -> None:
    """Raise a one-line `SettingError` when `device` names a GPU that torch cannot use here (no CUDA GPU,
    a CPU-only torch build, GPUs hidden by `CUDA_VISIBLE_DEVICES`, an index past the last GPU, no MPS).
    Called where the model will load (the local process, or a Ray worker, whose machine may have the
    GPU its driver lacks), before any weight is downloaded; `auto` always resolves to something usable.
    `set_on_stage`: the stage's own `device` (which `--device` does not override), for the hint."""
    from recognize.errors import SettingError

    if device == "auto" or not (_CUDA.match(device) or device == "mps"):
        return
    import torch

    prefix = f"{who}: " if who else ""
    hint = ("set this stage's own device (its `with:` in the recipe) to cpu or auto" if set_on_stage
            else "use device cpu or auto (--device on the command line)")
    if device == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise SettingError(f"{prefix}device mps, but torch sees no Apple GPU (MPS) here; {hint}")
        return
    if not torch.cuda.is_available():
        if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
            why = "CUDA_VISIBLE_DEVICES is empty: every GPU is hidden (a Ray worker is given GPUs by num_gpus)"
        elif torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            why = "this torch is a CPU-only build"
        else:
            why = "no CUDA GPU or driver found"
        raise SettingError(f"{prefix}device {device}, but torch cannot use a CUDA GPU here ({why}); {hint}")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise SettingError(f"{prefix}device {device}, but this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                           f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")


def normalize_device(device: Any) -> str:
    """One spelling per device: `cuda` and `cuda:0` (when 0 is current) are the same GPU, so the
    same key in `SharedModels`. A `torch.device` becomes its string."""
    text = str(device)
    match = _CUDA.match(text)
    if match is None or match.group(1):
        return text
    index = 0
    import sys

    torch = sys.modules.get("torch")  # only a process that already uses torch can have a current GPU
    if torch is not None and torch.cuda.is_available():
        index = torch.cuda.current_device()
    return f"cuda:{index}"


def _key(key: Any) -> Any:
    """`key` with every device spelled one way (tuples are walked; other values pass through)."""
    if isinstance(key, tuple):
        return tuple(_key(part) for part in key)
    if isinstance(key, str) and _CUDA.match(key):
        return normalize_device(key)
    if type(key).__name__ == "device" and type(key).__module__ == "torch":
        return normalize_device(key)
    return key


class _Entry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loading: int | None = None  # thread id while the factory runs
        self.value: Any = None
        self.ready = False
        self.owners: weakref.WeakSet[Any] = weakref.WeakSet()
        self.pinned = False  # asked for without an owner: kept until evict()/clear()


class SharedModels:
    """Process-wide pool so stages that need the same weights share one copy in memory.

    The tagger that tags images and the `region_confirm` stage that re-checks crops ask for
    the same key and get the same module. Why per-key locks: a 5 GB checkpoint loading must not
    hold up a different model's load, and a loader may itself ask the pool for another model.
    Why owners: a model is held while a stage that asked for it lives (or until it calls
    `release`/`Stage.unload`); when the last one goes, the model is evicted, so a notebook that
    builds pipeline after pipeline does not keep every model of every earlier one on the GPU.
    Devices in keys are normalised (`cuda` == `cuda:0` when 0 is the current GPU).
    """

    def __init__(self) -> None:
        self._entries: dict[Any, _Entry] = {}
        # guards `_entries` only, never held while a model loads; re-entrant because a garbage-collected
        # owner's finalizer (`_drop_dead`) may run in this thread while it holds the lock
        self._lock = threading.RLock()

    def get(self, key: Any, factory: Callable[[], Any], owner: Any = None) -> Any:
        """The model under `key`, built by `factory` on first request; `owner` (usually the stage)
        holds it until the owner is released or garbage-collected. Without an owner the model
        stays until `evict(key)` or `clear()`."""
        key = _key(key)
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = _Entry()
                self._hold(key, entry, owner)
            if entry.loading == threading.get_ident():
                raise RecognizeError(f"the loader of shared model {key!r} asks the pool for itself")
            with entry.lock:
                if entry.ready:
                    return entry.value
                with self._lock:
                    orphaned = self._entries.get(key) is not entry  # its load failed, or it was evicted
                if orphaned:
                    continue
                entry.loading = threading.get_ident()
                try:
                    entry.value = factory()
                    entry.ready = True
                    return entry.value
                except BaseException:
                    with self._lock:
                        if self._entries.get(key) is entry:
                            del self._entries[key]  # the next request (or a waiting one) tries again
                    raise
                finally:
                    entry.loading = None

    def _hold(self, key: Any, entry: _Entry, owner: Any) -> None:
        if owner is None:
            entry.pinned = True
            return
        if owner not in entry.owners:
            entry.owners.add(owner)
            weakref.finalize(owner, self._drop_dead, key, entry)

    def _drop_dead(self, key: Any, entry: _Entry) -> None:
        with self._lock:
            if self._entries.get(key) is entry and not entry.pinned and not _alive(entry):
                del self._entries[key]

    def release(self, owner: Any) -> None:
        """`owner` no longer needs its models; each one no other owner holds is evicted."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                if owner in entry.owners:
                    entry.owners.discard(owner)
                    if not entry.pinned and not _alive(entry):
                        del self._entries[key]
        _free_gpu_cache()

    def evict(self, key: Any) -> bool:
        """Forget the model under `key` whoever holds it; True if there was one."""
        with self._lock:
            found = self._entries.pop(_key(key), None) is not None
        _free_gpu_cache()
        return found

    def clear(self) -> None:
        """Forget every model (tests; a notebook that wants its GPU memory back)."""
        with self._lock:
            self._entries.clear()
        _free_gpu_cache()

    def keys(self) -> list[Any]:
        with self._lock:
            return [k for k, e in self._entries.items() if e.ready]

    def __contains__(self, key: Any) -> bool:
        with self._lock:
            entry = self._entries.get(_key(key))
            return entry is not None and entry.ready

    def __len__(self) -> int:
        return len(self.keys())


def _alive(entry: _Entry) -> bool:
    return any(True for _ in entry.owners)  # iterating skips owners already collected


def _free_gpu_cache() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


shared_models = SharedModels()
