"""The contract checks themselves (see `recognize.testing` for how a plugin's tests call them)."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from recognize.frame import Frame
from recognize.stage import OutputStage, Stage, StageParams

StageFactory = Callable[[], Stage]
#: a key no stage's Params can hold: it must be rejected
UNKNOWN_KEY = "no_such_parameter_recognize_testing"


class ContractViolation(AssertionError):
    """A stage breaks a rule of the plugin contract; the message names the rule."""


def _fail(stage: Any, rule: str) -> typing.NoReturn:
    name = getattr(stage, "name", None) or type(stage).__name__
    raise ContractViolation(f"stage {name!r}: {rule}")


def sample_frames(sizes: Sequence[tuple[int, int]] = ((48, 64), (80, 40), (37, 37)), seed: int = 0) -> list[Frame]:
    """Fresh frames around small seeded images of different sizes (height, width), so that a stage
    sees a batch whose images cannot be stacked without resizing."""
    rng = np.random.default_rng(seed)
    frames = []
    for i, (height, width) in enumerate(sizes):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        frames.append(Frame.from_array(image, source=f"sample_{i}.png", name=f"sample_{i}"))
    return frames


def copy_frames(frames: Sequence[Frame]) -> list[Frame]:
    """Deep copies (pixels included), so one run cannot see what another run added."""
    copies = []
    for frame in frames:
        clone = frame.model_copy(deep=True)
        clone._image = None if frame._image is None else frame._image.copy()
        copies.append(clone)
    return copies


# -- parameters --------------------------------------------------------------------------------
def check_params(stage_cls: type[Stage], **valid: Any) -> None:
    """Class attributes are well formed, `Params` rejects unknown keys, and `describe()` rebuilds
    the same stage (what a recipe and a resumed run's manifest rely on).

    `valid`: parameters that build the stage (needed when a parameter has no default).
    """
    from recognize.stage import StageKind, StageScope

    if not (isinstance(stage_cls, type) and issubclass(stage_cls, Stage)):
        raise ContractViolation(f"{stage_cls!r} is not a recognize.Stage subclass")
    name = getattr(stage_cls, "name", None)
    if not isinstance(name, str) or not name.strip():
        _fail(stage_cls, "needs a non-empty string `name` (what recipes write after `use:`)")
    if getattr(stage_cls, "kind", None) not in typing.get_args(StageKind):
        _fail(stage_cls, f"`kind` must be one of {typing.get_args(StageKind)}")
    if getattr(stage_cls, "scope", None) not in typing.get_args(StageScope):
        _fail(stage_cls, f"`scope` must be one of {typing.get_args(StageScope)}")
    if issubclass(stage_cls, OutputStage) != (stage_cls.kind == "output"):
        _fail(stage_cls, "an output stage subclasses OutputStage and has kind 'output' (both or neither)")
    if not issubclass(stage_cls.Params, StageParams):
        _fail(stage_cls, "`Params` must subclass recognize.StageParams (it forbids unknown keys)")
    try:
        stage_cls(**valid, **{UNKNOWN_KEY: 1})
    except ValidationError as exc:
        if UNKNOWN_KEY not in str(exc):
            _fail(stage_cls, f"the error for an unknown parameter must name it; got: {exc}")
    else:
        _fail(stage_cls, "accepted an unknown parameter: a typo in a recipe would be ignored silently")
    stage = stage_cls(**valid)
    described = stage.describe()
    use = str(described.get("use", ""))
    if use != name and not use.endswith(f":{name}"):  # `plugin:name` when two plugins share the name
        _fail(stage_cls, f"describe() must name the stage ('use': {name!r}); got {described!r}")
    again = stage_cls(**described["with"])
    if again.describe() != described or again.params != stage.params:
        _fail(stage_cls, "a stage rebuilt from describe() must equal the original (recipes and manifests)")


# -- frames ------------------------------------------------------------------------------------
def check_frames(frames: Sequence[Frame], stage: Any = "stage") -> None:
    """What every stage leaves on a frame: regions carry a tag the frame has, boxes lie in the image,
    masks have the image's size, and the frame still serialises to the run's JSON."""
    for frame in frames:
        if not isinstance(frame, Frame):
            _fail(stage, f"returned {type(frame).__name__}, not a Frame")
        width, height = frame.width, frame.height
        names = set(frame.tag_names)
        for region in frame.regions:
            if region.tag not in names:
                _fail(stage, f"{frame.source}: region tag {region.tag!r} is not one of the frame's tags "
                             f"{sorted(names)}; add the tag to frame.tags too")
            x0, y0, x1, y1 = region.box
            if width and height and not (0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height):
                _fail(stage, f"{frame.source}: box {region.box} lies outside the {width}x{height} image")
            if region.mask is not None:
                if region.mask.dtype != bool:
                    _fail(stage, f"{frame.source}: a mask must be boolean, got {region.mask.dtype}")
                if region.mask.shape != (height, width):
                    _fail(stage, f"{frame.source}: mask of shape {region.mask.shape} on a {width}x{height} image; "
                                 f"masks have the frame's size (height, width)")
        try:
            Frame.from_json(frame.to_json())
        except (ValueError, TypeError) as exc:
            _fail(stage, f"{frame.source}: the frame no longer serialises to JSON: {exc}")


def _close(a: Any, b: Any, atol: float, rtol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    if math.isnan(a) and math.isnan(b):
        return True
    return abs(a - b) <= atol + rtol * abs(b)


def _diff(a: Any, b: Any, path: str, atol: float, rtol: float) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{path}: keys {sorted(set(a) ^ set(b))} differ"
        for key in a:
            found = _diff(a[key], b[key], f"{path}.{key}", atol, rtol)
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = _diff(x, y, f"{path}[{i}]", atol, rtol)
            if found:
                return found
        return None
    return None if _close(a, b, atol, rtol) else f"{path}: {a!r} vs {b!r}"


def assert_frames_equal(got: Sequence[Frame], expected: Sequence[Frame], *, atol: float = 1e-5, rtol: float = 1e-5,
                        mask_tolerance: float = 0.0, what: str = "frames") -> None:
    """Same tags, regions, caption and meta; numbers within `atol + rtol * |expected|`, masks equal
    up to a `mask_tolerance` fraction of their pixels."""
    if len(got) != len(expected):
        raise ContractViolation(f"{what}: {len(got)} frames vs {len(expected)}")
    for a, b in zip(got, expected):
        masks_a = [r.mask for r in a.regions]
        masks_b = [r.mask for r in b.regions]
        dump_a = a.model_dump(mode="json", exclude={"regions": {"__all__": {"mask"}}})
        dump_b = b.model_dump(mode="json", exclude={"regions": {"__all__": {"mask"}}})
        found = _diff(dump_a, dump_b, a.source, atol, rtol)
        if found:
            raise ContractViolation(f"{what} differ at {found}")
        for k, (x, y) in enumerate(zip(masks_a, masks_b)):
            if (x is None) != (y is None) or (x is not None and x.shape != y.shape):
                raise ContractViolation(f"{what} differ at {a.source}.regions[{k}].mask (presence or shape)")
            if x is not None and np.count_nonzero(x != y) > mask_tolerance * x.size:
                raise ContractViolation(f"{what} differ at {a.source}.regions[{k}].mask: "
                                    f"{np.count_nonzero(x != y)} of {x.size} pixels")


def _run(stage: Stage, frames: list[Frame]) -> list[Frame]:
    out = stage(frames)
    if not isinstance(out, list) or len(out) != len(frames):
        _fail(stage, f"process() must return the list of frames it was given ({len(frames)}), got "
                     f"{type(out).__name__} of {len(out) if hasattr(out, '__len__') else '?'}")
    for i, (given, back) in enumerate(zip(frames, out)):
        if back is not given:
            _fail(stage, f"process() must return the frames it was given, in order: item {i} is "
                         f"{getattr(back, 'source', back)!r}, expected the frame of {given.source!r} itself")
    return out


def check_batch_independence(stage: Stage, frames: Sequence[Frame], *, atol: float = 1e-4, rtol: float = 1e-4,
                             mask_tolerance: float = 0.0) -> list[Frame]:
    """A batch gives each frame what it gets alone, in any order: results never depend on batch
    neighbours, and frames come back in the order given (the same objects, enriched in place).
    Returns the frames of the batch run.

    A dataset-scope stage sees every frame at once by design; for it only the order is checked."""
    frames = list(frames)
    together = _run(stage, copy_frames(frames))
    reverse = _run(stage, copy_frames(frames[::-1]))[::-1]
    what = f"stage {stage.name!r}: results in a batch of {len(frames)}"
    if stage.scope == "dataset":
        assert_frames_equal(reverse, together, atol=atol, rtol=rtol, mask_tolerance=mask_tolerance,
                            what=f"{what} in reverse order")
        return together
    alone = [_run(stage, [frame])[0] for frame in copy_frames(frames)]
    assert_frames_equal(together, alone, atol=atol, rtol=rtol, mask_tolerance=mask_tolerance,
                        what=f"{what} vs one by one")
    assert_frames_equal(reverse, alone, atol=atol, rtol=rtol, mask_tolerance=mask_tolerance,
                        what=f"{what} in reverse order vs one by one")
    return together


class _ReadKeys(dict):
    """A frame's kept inputs that remember which keys were read (`Frame.prepared` reads with `get`)."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[Any] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


#: what a stage writes on a frame: `prepare` runs before earlier stages have written theirs
_RESULT_FIELDS = ("tags", "regions", "caption", "dropped", "meta")


def check_prepared_inputs(stage: Stage, frames: Sequence[Frame], expected: Sequence[Frame], *, atol: float = 1e-4,
                          rtol: float = 1e-4, mask_tolerance: float = 0.0) -> None:
    """A stage that makes inputs ahead (`Stage.prepare`, which the engines run on their prefetch
    thread) gives with them the frames it gives without them (`expected`). `prepare` raises nothing,
    reads and changes no result (it runs here on frames whose results are emptied: in a chain the
    earlier stages have not run yet), and keeps its inputs under the keys `process` reads."""
    from recognize.prefetch import decode

    if type(stage).prepare is Stage.prepare:
        return
    stage.ensure_loaded()  # the engines prepare for loaded stages only
    ahead = copy_frames(frames)
    kept: list[_ReadKeys] = []
    for frame in ahead:
        decode(frame)  # as the prefetch thread does first (it sets the size of a frame read from a file)
        results = {name: getattr(frame, name) for name in _RESULT_FIELDS}
        for name in _RESULT_FIELDS:
            setattr(frame, name, type(results[name])() if results[name] is not None else None)
        before = frame.model_dump(mode="json")
        frame._prepared = _ReadKeys()
        kept.append(frame._prepared)
        try:
            stage.prepare(frame)
        except Exception as exc:  # noqa: BLE001 - reported as the rule it breaks
            _fail(stage, f"prepare() raised {type(exc).__name__}: {exc} (the engines would log it and make the input "
                         "in process() instead: prepare reads only params, pixels and the loaded model, no results)")
        frame._prepared.read.clear()  # `prepare_ahead` looks its key up too: only `process`'s reads count
        if frame.model_dump(mode="json") != before:
            _fail(stage, "prepare() must not change a frame's results (tags, regions, meta ...): it only makes inputs")
        for name, value in results.items():
            setattr(frame, name, value)
    assert_frames_equal(_run(stage, ahead), expected, atol=atol, rtol=rtol, mask_tolerance=mask_tolerance,
                        what=f"stage {stage.name!r}: results with inputs made ahead (prepare) vs without")
    # a frame `process` read inputs for, but not the ones kept (frames it skips, e.g. SAM's without regions, read none)
    missed = sorted({repr(key) for inputs in kept if inputs.read for key in inputs if key not in inputs.read})
    if missed:
        _fail(stage, f"prepare() kept inputs under {', '.join(missed)}, which process() did not read: "
                     "use the same key in frame.prepare_ahead and frame.prepared")


# -- outputs -----------------------------------------------------------------------------------
class SimulatedCrash(BaseException):
    """Raised in place of the rename that commits a file: the process 'dies' right before it."""


@contextlib.contextmanager
def _crash_on_commit() -> Iterator[None]:
    real_replace, real_rename = os.replace, os.rename

    def crash(*_args: Any, **_kwargs: Any) -> None:
        raise SimulatedCrash()

    os.replace = os.rename = crash  # type: ignore[assignment]
    try:
        yield
    finally:
        os.replace, os.rename = real_replace, real_rename


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def check_output(stage: OutputStage, frames: Sequence[Frame], out_dir: str | os.PathLike[str] | None = None) -> None:
    """An output stage writes what `files()` names, atomically (a crash before the final rename leaves
    no file at all, never a partial one), idempotently (writing again gives the same bytes) and
    never changes the frames it writes.

    An append-only output (`OutputStage.append_only`, e.g. `shards`) keeps its files open and adds
    whole records, located by the run's done journal: for it, every file must end with a whole
    record (no torn line) instead, and writing again may append (readers take the last record)."""
    if not isinstance(stage, OutputStage):
        _fail(stage, "an output must subclass recognize.OutputStage")
    with contextlib.ExitStack() as stack:
        root = Path(out_dir) if out_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        frames = copy_frames(frames)
        before = [f.model_dump(mode="json") for f in frames]
        stage.ensure_loaded()

        crashed = root / "crashed"
        crashed.mkdir(parents=True, exist_ok=True)
        with _crash_on_commit():
            for frame in frames:
                with contextlib.suppress(SimulatedCrash):
                    stage.write(frame, crashed)
            with contextlib.suppress(SimulatedCrash):
                stage.finish(list(frames), crashed)
        left = sorted(_snapshot(crashed))
        if stage.append_only:
            # hidden files are no records: a Parquet shard still being written is `.part-N.parquet.<pid>.partial`
            torn = [name for name, data in _snapshot(crashed).items()
                    if data and not data.endswith(b"\n") and not Path(name).name.startswith(".")]
            if torn:
                _fail(stage, f"an append-only output left torn records in {torn}; append whole lines")
        elif left:
            _fail(stage, f"left {left} behind when the process died before committing; write through "
                         "recognize.atomic (atomic_write / write_text / write_bytes) so a file is whole or absent")

        out = root / "out"
        for frame in frames:
            stage.write(frame, out)
            missing = [str(p) for p in stage.files(frame, out) if not p.is_file()]
            if missing:
                _fail(stage, f"files() names {missing}, which write() did not write")
        stage.finish(list(frames), out)
        first = _snapshot(out) if out.is_dir() else {}
        if any(".part" in name for name in first):
            _fail(stage, f"temporary files left in the output folder: {sorted(first)}")
        for frame in frames:
            stage.write(frame, out)
        stage.finish(list(frames), out)
        second = _snapshot(out) if out.is_dir() else {}
        if first != second and not stage.append_only:
            changed = sorted(k for k in set(first) | set(second) if first.get(k) != second.get(k))
            _fail(stage, f"writing the same frames again changed {changed}; outputs must be idempotent "
                         "(a resumed run rewrites them)")
        if [f.model_dump(mode="json") for f in frames] != before:
            _fail(stage, "an output must not change the frames it writes")


# -- everything --------------------------------------------------------------------------------
def check_stage(factory: StageFactory | Stage, frames: Sequence[Frame] | None = None, *,
                valid_params: dict[str, Any] | None = None, atol: float = 1e-4, rtol: float = 1e-4,
                mask_tolerance: float = 0.0, out_dir: str | os.PathLike[str] | None = None) -> list[Frame]:
    """Every rule that applies to the stage: parameters, batch independence and order, what it leaves
    on frames, the same results with inputs made ahead (`prepare`); for an output stage, atomic and
    idempotent files. Returns the processed frames.

    `factory` builds the stage (a class with defaults that work, a lambda, or an instance whose
    parameters are reused). `frames` default to `sample_frames()`; give frames with the tags or
    regions your stage needs as input.
    """
    stage = factory if isinstance(factory, Stage) else factory()
    params = valid_params if valid_params is not None else stage.params.model_dump(exclude_unset=True)
    check_params(type(stage), **params)
    frames = list(frames) if frames is not None else sample_frames()
    check_frames(frames, "the input frames")
    if isinstance(stage, OutputStage):
        check_output(stage, frames, out_dir)
        return copy_frames(frames)
    processed = check_batch_independence(stage, frames, atol=atol, rtol=rtol, mask_tolerance=mask_tolerance)
    check_frames(processed, stage)
    check_prepared_inputs(stage, frames, processed, atol=atol, rtol=rtol, mask_tolerance=mask_tolerance)
    return processed
