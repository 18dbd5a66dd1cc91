"""The `sam` segmenter stage: each region's box becomes a mask (stored as COCO RLE in the JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from recognize.fast_modes import Precision, Quantization, autocast, cap_regions, quantize_linear_int8
from recognize.frame import Frame
from recognize.hub import FileRef
from recognize.stage import (
    Device,
    Stage,
    StageKind,
    StageParams,
    resolve_device,
    shared_models,
)
from recognize_sam.cards import CHECKPOINTS
from recognize_sam.config import SamConfig


class SamParams(StageParams):
    """How to build SAM and decode boxes. A `config` with `weights: random` gives a tiny test model."""

    model: Literal["vit_h", "vit_l", "vit_b"] = Field(
        "vit_h", description="official SAM variant; vit_b is the light one (~1/7 of vit_h's encoder FLOPs), for CPUs")
    checkpoint: str | None = Field(None, description="local checkpoint path; default: the cached official file")
    config: SamConfig | None = Field(None, description="custom image-encoder size instead of `model`")
    weights: Literal["checkpoint", "random"] = Field(
        "checkpoint", description="`random`: seeded random initialisation, for tests and benchmarks only"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the random initialisation")
    multimask: bool = Field(True, description="decode 3 candidates per box and keep the best-scoring one")
    device: Device = "auto"
    batch_size: int = Field(1, ge=1, le=4096, description="images per image-encoder call")
    # fast modes (recognize.fast_modes): the defaults are the exact path
    dtype: Precision = Field("float32", description="fast mode: autocast the model to bfloat16/float16")
    quantize: Quantization = Field("none", description="fast mode: int8: torchao int8 Linear layers in the image encoder")
    max_regions: int | None = Field(
        None, ge=0, le=100_000, description="fast mode: segment only the N best-scoring regions per image; the rest are dropped")

    @model_validator(mode="after")
    def _weights_known(self) -> SamParams:
        if self.config is not None and self.weights == "checkpoint" and not self.checkpoint:
            raise ValueError("a custom `config` has no official weights: give `checkpoint` or set `weights: random`")
        return self


class Sam(Stage):
    """Segment Anything: one image embedding per frame, then one mask per region.

    Sets `Region.mask` (bool HxW, the image's size) and `Region.mask_score` (SAM's predicted IoU),
    and copies the Chinese tag name onto regions that lack it.
    """

    name: ClassVar[str] = "sam"
    kind: ClassVar[StageKind] = "segmenter"
    Params: ClassVar[type[StageParams]] = SamParams
    params: SamParams

    def model_files(self) -> list[FileRef]:
        """The official checkpoint of `model`, unless `checkpoint` is given or the weights are random."""
        p = self.params
        if p.weights == "random" or p.checkpoint:
            return []
        card, filename = CHECKPOINTS[p.model]
        return [FileRef(card, filename)]

    def load(self) -> None:
        # torch and segment_anything are imported here, not at the top: registering stays light
        from recognize_sam.model import build_sam, load_checkpoint
        from recognize_sam.predict import BoxSegmenter

        p = self.params
        device = resolve_device(p.device)
        checkpoint = None if p.weights == "random" else self._checkpoint_path().resolve()
        # keyed by the resolved path, so a relative and an absolute path to one file share the model
        source = ("random", p.seed) if checkpoint is None else str(checkpoint)

        def build() -> Any:
            if checkpoint is None:
                sam = build_sam(p.model, p.config, seed=p.seed).to(device)
            else:
                expected = p.model if p.config is None else "custom"
                # parameters on meta: the checkpoint's memory-mapped tensors are assigned, no random init first
                sam = load_checkpoint(build_sam(p.model, p.config, on_meta=True), checkpoint, expected=expected).to(device)
            if p.quantize == "int8":  # the encoder holds ~all of SAM's FLOPs; the decoder runs per box, small
                quantize_linear_int8(sam.image_encoder)
            return sam

        variant = p.config if p.config is not None else p.model
        sam = shared_models.get(("sam", variant, source, device, p.quantize), build, owner=self)
        self.segmenter = BoxSegmenter(sam)

    def unload(self) -> None:
        super().unload()
        self.segmenter = None

    def _checkpoint_path(self) -> Path:
        from recognize.hub import resolve_path
        from recognize_sam.cards import CHECKPOINTS, card_for

        return resolve_path(self.params.checkpoint, card_for(self.params.model), CHECKPOINTS[self.params.model][1])

    def prepare(self, frame: Frame) -> None:
        """SAM's resize of the image (Pillow, the costly part), made ahead by the engine."""
        frame.prepare_ahead(*self.segmenter.encoder_input())

    def process(self, frames: list[Frame]) -> list[Frame]:
        key, resize = self.segmenter.encoder_input()
        for frame in frames:
            cap_regions(frame, self.params.max_regions, self.name)
        todo = [frame for frame in frames if frame.regions]
        size = self.params.batch_size
        device, dtype = self.segmenter.device, self.params.dtype
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            with autocast(device, dtype):
                embeddings = self.segmenter.embed([frame.image for frame in chunk],
                                                  lambda i: chunk[i].prepared(key, resize))  # noqa: B023 - called at once
            for frame, embedding in zip(chunk, embeddings):
                boxes = np.array([region.box for region in frame.regions], dtype=np.float64)
                with autocast(device, dtype):
                    result = self.segmenter.segment(embedding, boxes, multimask=self.params.multimask)
                names_zh = {tag.name: tag.name_zh for tag in frame.tags if tag.name_zh}
                for region, mask, score in zip(frame.regions, result.masks, result.scores):
                    region.mask = mask
                    region.mask_score = float(score)
                    if region.tag_zh is None:
                        region.tag_zh = names_zh.get(region.tag)
        return frames
