"""`TaggerStage`: the base of every image tagger stage (RAM, RAM++, Tag2Text).

A subclass says how to build its model and vocabulary; the base does the rest the same way for all:
lazy loading through `recognize.stage.shared_models` (one copy of the weights per key, shared with
e.g. a region re-check stage), device and dtype placement, batches of images as one forward pass,
thresholds (class thresholds, global override, per-tag overrides), include / exclude lists, and the
conversion of scores into `Tag`s in class-index order (the official order, not sorted by score).

Subclass hooks: `model_key()`, `build_model()` (loaded, float32, on CPU), `build_vocabulary(model)`,
`image_size`, `logits(model, pixels)` and `embedding(model, pixels)`; optionally `deleted_indices()`
(classes never reported, the official `delete_tag_index`).

Public helpers for later stages (evaluation, region re-check, outlier clustering):
`score_images(images) -> [B,C]` sigmoid scores, `tags_for_scores(scores) -> list[list[Tag]]`,
`embed_images(images) -> [B,D]` L2-normalised image embeddings, `score_and_embed_images` (both from
one encoding), and `vocabulary`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import Field

from recognize.errors import ModelFileError
from recognize.frame import Frame, Tag
from recognize.stage import (
    Device,
    Stage,
    StageKind,
    StageParams,
    resolve_device,
    shared_models,
)

if TYPE_CHECKING:  # pragma: no cover - torch is imported on first use: registering stays light
    import torch
    from torch import nn

    from recognize.taggers.vocabulary import Vocabulary

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
DType = Literal["float32", "bfloat16", "float16"]
_F = TypeVar("_F", bound=Callable[..., Any])


def inference_mode(function: _F) -> _F:
    """`torch.inference_mode()` as a decorator that imports torch only when the method runs."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def config_asset(config: Path, value: str | None) -> Path | None:
    """A file named in a fixture config: relative to its folder or one of its ancestors."""
    if not value:
        return None
    for folder in (config.parent, *config.parent.parents):
        if (folder / value).is_file():
            return folder / value
    return None


class TaggerParams(StageParams):
    checkpoint: str | None = Field(None, description="local checkpoint file; None: the released file (hub)")
    image_size: Literal[224, 384] = Field(384, description="input size of the released configuration")
    config: str | None = Field(None, description="fixture-style config.json for a non-released configuration")
    threshold: Probability | None = Field(None, description="one threshold for every class (overrides the file)")
    thresholds: dict[str, Probability] = Field(default_factory=dict, description="per-tag thresholds")
    include: list[str] | None = Field(None, description="report only these tags")
    exclude: list[str] = Field(default_factory=list, description="never report these tags")
    tag_list: str | None = Field(None, description="tag list file (default: the official one)")
    device: Device = "auto"
    dtype: DType = "float32"
    batch_size: int = Field(8, ge=1, le=4096)


class TaggerStage(Stage):
    kind: ClassVar[StageKind] = "tagger"
    Params: ClassVar[type[StageParams]] = TaggerParams

    def __init__(self, params: StageParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.model: nn.Module | None = None
        self.vocabulary: Vocabulary | None = None
        self.allowed: np.ndarray | None = None

    # -- hooks ---------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return int(self.params.image_size)

    def model_key(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def build_vocabulary(self, model: nn.Module) -> Vocabulary:
        raise NotImplementedError

    def logits(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embedding(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits_and_embedding(self, model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(logits, embedding)` of the same pixels; override to encode the images once."""
        return self.logits(model, pixels), self.embedding(model, pixels)

    def deleted_indices(self) -> Sequence[int]:
        return ()

    # -- loading -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        import torch

        return torch.device(resolve_device(self.params.device))

    def _config_data(self) -> dict[str, Any] | None:
        """The fixture-style `config.json` named by the `config` param, or None (released sizes)."""
        if self.params.config is None:
            return None
        path = Path(self.params.config)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelFileError(f"{path}: no such model config file") from None
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{path}: unreadable model config ({exc})") from None

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.params.dtype)

    def load(self) -> None:
        device, dtype = self.device, self.dtype

        def factory() -> nn.Module:
            from recognize.onednn_linear import use_onednn_linears
            from recognize.taggers.lean_swin import use_lean_blocks

            model = self.build_model().eval().to(device=device, dtype=dtype).requires_grad_(False)
            use_onednn_linears(model)  # CPU fp32: oneDNN's GEMM on AVX-512 CPUs (~2x MKL's on AMD); else torch's
            use_lean_blocks(model)  # timm's Swin maths with fewer passes over memory (exact path only)
            return model

        self.model = shared_models.get((*self.model_key(), str(device), str(dtype)), factory, owner=self)
        base = self.build_vocabulary(self.model)
        self.vocabulary = base.with_thresholds(self.params.threshold, self.params.thresholds)
        allowed = self.vocabulary.allowed_mask(self.params.include, self.params.exclude)
        allowed[list(self.deleted_indices())] = False
        self.allowed = allowed

    # -- public API ----------------------------------------------------------------------
    def unload(self) -> None:
        super().unload()
        self.model = None

    def pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The model input of RGB uint8 images of any size: the official transform (`preprocess`)."""
        _, resize = self._resize_job()
        return self._normalized([resize(image) for image in images])

    def score_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Sigmoid scores [B, C] for every class of the active vocabulary, one forward per batch."""
        return self._scores(images, self.pixels)

    def frame_pixels(self, frames: Sequence[Frame]) -> torch.Tensor:
        """`pixels` of the frames' images, resized ahead where the engine ran `prepare`."""
        key, resize = self._resize_job()
        return self._normalized([frame.prepared(key, resize) for frame in frames])

    def _normalized(self, resized: Sequence[np.ndarray]) -> torch.Tensor:
        from recognize.device_copies import to_device
        from recognize.taggers.preprocess import normalize

        return to_device(normalize(np.stack(resized)), self.device, self.dtype)  # pinned on CUDA

    @inference_mode
    def _scores(self, items: Sequence[Any], pixels: Callable[[Sequence[Any]], torch.Tensor]) -> np.ndarray:
        """Scores of `items` (images, or frames), turned into model inputs by `pixels` a batch at a time."""
        self.ensure_loaded()
        out = []
        for start in range(0, len(items), self.params.batch_size):
            logits = self.logits(self.model, pixels(items[start : start + self.params.batch_size]))
            out.append(logits.float().sigmoid().cpu().numpy())
        n = len(self.vocabulary) if self.vocabulary is not None else 0
        return np.concatenate(out) if out else np.zeros((0, n), dtype=np.float32)

    @inference_mode
    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised image embeddings [B, D] (for clustering crops)."""
        self.ensure_loaded()
        out = []
        for start in range(0, len(images), self.params.batch_size):
            emb = self.embedding(self.model, self.pixels(images[start : start + self.params.batch_size])).float()
            import torch

            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    @inference_mode
    def score_and_embed_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """`(score_images(images), embed_images(images))` from one encoding per batch (what
        `region_confirm` computes when `region_outliers` will cluster the same crops)."""
        import torch

        self.ensure_loaded()
        scores, embeddings = [], []
        for start in range(0, len(images), self.params.batch_size):
            logits, emb = self.logits_and_embedding(self.model, self.pixels(images[start : start + self.params.batch_size]))
            scores.append(logits.float().sigmoid().cpu().numpy())
            embeddings.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy())
        if not scores:  # no images: the shapes `score_images` and `embed_images` give for none
            n = len(self.vocabulary) if self.vocabulary is not None else 0
            return np.zeros((0, n), dtype=np.float32), np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(scores), np.concatenate(embeddings)

    def predicted_indices(self, scores: np.ndarray) -> list[np.ndarray]:
        """Per image, the reported class indices (strict `>` thresholds, allowed classes, ascending)."""
        self.ensure_loaded()
        return self.vocabulary.predict(scores, self.allowed)

    def tags_for_scores(self, scores: np.ndarray) -> list[list[Tag]]:
        vocab = self.vocabulary
        result = []
        for row, indices in zip(scores, self.predicted_indices(scores)):
            result.append(
                [
                    Tag(name=vocab.names[i], name_zh=vocab.clean_zh(i), score=float(row[i]), index=int(i), source=self.name)
                    for i in indices
                ]
            )
        return result

    def prepare(self, frame: Frame) -> None:
        """The image resized to the model's input (Pillow, the costly part), made ahead by the engine."""
        frame.prepare_ahead(*self._resize_job())

    def _resize_job(self) -> tuple[tuple[str, int], Callable[[np.ndarray], np.ndarray]]:
        """`(key, resize)`: the official resize to `image_size`, and the key every tagger of that
        size keeps it under (the same input: RAM++ and Tag2Text at 384 share one)."""
        from recognize.taggers.preprocess import resize_image

        size = self.image_size
        return ("tagger_input", size), lambda image: np.asarray(resize_image(image, size))

    def process(self, frames: list[Frame]) -> list[Frame]:
        if not frames:
            return frames
        scores = self._scores(frames, self.frame_pixels)
        for frame, tags in zip(frames, self.tags_for_scores(scores)):
            frame.tags.extend(tags)
        return frames
