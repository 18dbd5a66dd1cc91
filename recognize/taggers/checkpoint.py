"""Strict loading of official RAM / RAM++ / Tag2Text checkpoint files into our modules.

API:
- `read_checkpoint(path) -> dict[str, Tensor]`: `torch.load(weights_only=True)` (memory-mapped when the
  file allows), unwraps `{'model': state_dict, ...}` (extra top-level keys such as `optimizer`,
  `config`, `epoch` are ignored), renames the old `vision_multi` prefix to `tagging_head`.
- `KeySpec`: what a model expects: `key_map` (model state-dict key -> checkpoint key),
  `ignored_prefixes` (checkpoint parts consumed by name but not loaded), `tied_groups` (checkpoint
  keys that must hold equal tensors), an optional `adapt(key, tensor, shape)` hook for tensors that
  may be resampled (Swin bias tables), and the dropped buffer names.
- `map_state_dict(state, spec, expected_shapes)` -> (`{model key: tensor}`, `LoadReport`): the whole
  check, usable with meta tensors (the manifest tests run it on shapes only).
- `load_official(model, checkpoint, spec) -> LoadReport`: map, then `load_state_dict(strict=True)`.
- `parameters_on_meta()` (from `recognize.meta_init`, shared with SAM and Grounding DINO): a context in
  which modules get their parameters on the meta device (no memory, no random initialisation) while
  buffers are built for real; `load_official` then assigns the checkpoint's tensors (`assign=True`)
  and checks that no meta tensor is left.

Why build on meta: a released tagger is ~0.5-1 GB of fp32 parameters; building it normally fills
them with random values (seconds of `trunc_normal_` on 2 cores) only for `load_state_dict` to copy
the checkpoint over them, so peak memory held the weights twice. With meta parameters and the
memory-mapped checkpoint assigned in place, the weights are read once, lazily, from the file's
pages. Buffers stay real because the constructor computes them (Swin's relative position index and
attention masks are not in the checkpoint).

Why strict: the official loader uses `load_state_dict(strict=False)`, so a wrong or truncated file
silently leaves random weights. Here every model key must be found with the right shape, every
checkpoint key must be loaded, deliberately ignored or a recomputed buffer, and tied copies must be
equal; otherwise a one-line `ModelFileError` says what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from recognize.errors import ModelFileError
from recognize.meta_init import parameters_on_meta  # noqa: F401 - re-exported (defined there, shared with SAM and Grounding DINO)

Adapter = Callable[[str, torch.Tensor, torch.Size], "torch.Tensor | None"]

#: Buffers in official checkpoints that the official loader deletes (the constructor rebuilds them).
DROPPED_BUFFERS = ("relative_position_index", "attn_mask")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read an official checkpoint file as a flat state dict (see module docstring).

    Bad files (text, HTML, LFS pointers, truncated archives, pickled objects) are one-line
    `ModelFileError`s from `recognize.weights_file.read_weights`."""
    from recognize.weights_file import read_weights

    return unwrap_state_dict(read_weights(path, "checkpoint"), str(path))


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """`{'model': sd, ...}` / `{'state_dict': sd}` / `sd` -> sd, with `vision_multi` renamed."""
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{source}: not a model checkpoint (no 'model' state dict of tensors inside)")
    return {str(k).replace("vision_multi", "tagging_head"): v for k, v in obj.items()}


@dataclass
class KeySpec:
    """What a model expects from an official checkpoint (see module docstring)."""

    key_map: Mapping[str, str]
    ignored_prefixes: Sequence[str] = ()
    tied_groups: Sequence[Sequence[str]] = ()
    adapt: Adapter | None = None
    dropped: Sequence[str] = DROPPED_BUFFERS
    model_name: str = "model"


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    tied_checked: int = 0


def _examples(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def map_state_dict(
    state: Mapping[str, torch.Tensor],
    spec: KeySpec,
    expected_shapes: Mapping[str, Sequence[int]],
    source: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map checkpoint tensors to model keys, checking everything; raises `ModelFileError`."""
    report = LoadReport()
    tied_of: dict[str, Sequence[str]] = {k: group for group in spec.tied_groups for k in group}

    # tied copies must be equal (meta tensors carry no values: shapes only)
    for group in spec.tied_groups:
        present = [k for k in group if k in state]
        for other in present[1:]:
            a, b = state[present[0]], state[other]
            if a.shape != b.shape or (not a.is_meta and not b.is_meta and not torch.equal(a, b)):
                raise ModelFileError(
                    f"{source}: tied weights differ: {present[0]} != {other} (the file is corrupt or was edited)"
                )
            report.tied_checked += 1

    mapped: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    missing: list[str] = []
    for model_key, ckpt_key in spec.key_map.items():
        source_key = ckpt_key if ckpt_key in state else next((k for k in tied_of.get(ckpt_key, ()) if k in state), None)
        if source_key is None:
            missing.append(ckpt_key)
            continue
        tensor = state[source_key]
        shape = torch.Size(expected_shapes[model_key])
        if tensor.shape != shape:
            adapted = spec.adapt(ckpt_key, tensor, shape) if spec.adapt is not None else None
            if adapted is None or adapted.shape != shape:
                raise ModelFileError(
                    f"{source}: {ckpt_key} has shape {list(tensor.shape)}, the {spec.model_name} expects "
                    f"{list(shape)} (a checkpoint for another model size or configuration?)"
                )
            tensor = adapted
            report.adapted.append(ckpt_key)
        mapped[model_key] = tensor
        consumed.add(source_key)
        consumed.update(k for k in tied_of.get(source_key, ()) if k in state)
    if missing:
        raise ModelFileError(
            f"{source}: not a complete {spec.model_name} checkpoint: {len(missing)} missing "
            f"key(s) ({_examples(missing)})"
        )

    unexpected = []
    for key in state:
        if key in consumed:
            continue
        if any(key.startswith(prefix) for prefix in spec.ignored_prefixes):
            report.ignored.append(key)
        elif any(name in key for name in spec.dropped):
            report.dropped.append(key)
        else:
            unexpected.append(key)
    if unexpected:
        raise ModelFileError(
            f"{source}: {len(unexpected)} unexpected key(s) for a {spec.model_name} "
            f"({_examples(unexpected)}); is it a checkpoint of another model?"
        )
    report.loaded = sorted(consumed)
    return mapped, report


def load_official(
    model: nn.Module, checkpoint: str | os.PathLike[str] | Mapping[str, torch.Tensor], spec: KeySpec
) -> LoadReport:
    """Load an official checkpoint (file or state dict) into `model`, strictly."""
    if isinstance(checkpoint, Mapping):
        state, source = unwrap_state_dict(checkpoint), "checkpoint"
    else:
        state, source = read_checkpoint(checkpoint), str(checkpoint)
    own = model.state_dict()
    expected = {k: v.shape for k, v in own.items()}
    unmapped = set(expected) - set(spec.key_map)
    if unmapped:  # a programming error, not a user error
        raise RuntimeError(f"key map of {spec.model_name} does not cover {_examples(unmapped)}")
    mapped, report = map_state_dict(state, spec, expected, source)
    model.load_state_dict(mapped, strict=True, assign=any(v.is_meta for v in own.values()))
    _compute_meta_buffers(model)
    left = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if left:  # a programming error: a tensor neither in the checkpoint nor computed by the constructor
        raise RuntimeError(f"{spec.model_name}: tensors left without values after loading: {_examples(left)}")
    return report


def _compute_meta_buffers(model: nn.Module) -> None:
    """Buffers a constructor computed from a meta parameter's device (timm's Swin attention masks)
    are meta too: recompute them, now that the parameters are real, through timm's convention
    (`init_non_persistent_buffers()`, what `timm.models.reinit_non_persistent_buffers` calls)."""
    for module in model.modules():
        if hasattr(module, "init_non_persistent_buffers") and any(b.is_meta for b in module.buffers(recurse=False)):
            module.init_non_persistent_buffers()
