"""The `sam2` segmenter stage: each region's box becomes a mask (stored as COCO RLE in the JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

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
from recognize_sam2.cards import Release, Variant
from recognize_sam2.config import Sam2Config


class Sam2Params(StageParams):
    """How to build SAM 2 and decode boxes. A `config` with `weights: random` gives a tiny test model."""

    model: Variant = Field("hiera_large", description="official SAM 2 variant")
    release: Release = Field("2.1", description="checkpoint release: SAM 2.1 (Sept 2024) or the first SAM 2")
    checkpoint: str | None = Field(None, description="local checkpoint path; default: the cached official file")
    config: Sam2Config | None = Field(None, description="custom Hiera trunk instead of `model`")
    weights: Literal["checkpoint", "random"] = Field(
        "checkpoint", description="`random`: seeded random initialisation, for tests and benchmarks only",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the random initialisation")
    multimask: bool = Field(True, description="decode 3 candidates per box and keep the best-scoring one")
    device: Device = "auto"
    batch_size: int = Field(1, ge=1, le=4096, description="images per image-encoder call")

    @model_validator(mode="after")
    def _weights_known(self) -> Sam2Params:
        if self.config is not None and self.weights == "checkpoint" and not self.checkpoint:
            raise ValueError("a custom `config` has no official weights: give `checkpoint` or set `weights: random`")
        return self


class Sam2(Stage):
    """SAM 2: one image embedding per frame, then one mask per region.

    Sets `Region.mask` (bool HxW, the image's size) and `Region.mask_score` (SAM 2's predicted
    IoU), and copies the Chinese tag name onto regions that lack it: the same contract as `sam`,
    so outputs and the data engine work unchanged.
    """

    name: ClassVar[str] = "sam2"
    kind: ClassVar[StageKind] = "segmenter"
    Params: ClassVar[type[StageParams]] = Sam2Params
    params: Sam2Params

    def model_files(self) -> list[FileRef]:
        """The official checkpoint of `model` and `release`, unless `checkpoint` is given or the weights are random."""
        from recognize_sam2.cards import card_name, checkpoint_filename

        p = self.params
        if p.weights == "random" or p.checkpoint:
            return []
        return [FileRef(card_name(p.model, p.release), checkpoint_filename(p.model, p.release))]

    def load(self) -> None:
        from recognize_sam2.model import build_sam2, load_checkpoint
        from recognize_sam2.predict import BoxSegmenter

        p = self.params
        device = resolve_device(p.device)
        checkpoint = None if p.weights == "random" else self._checkpoint_path().resolve()
        # keyed by the resolved path, so a relative and an absolute path to one file share the model
        source = ("random", p.seed) if checkpoint is None else str(checkpoint)
        architecture = p.config if p.config is not None else (p.model, p.release)

        def build() -> Any:
            if checkpoint is None:
                return build_sam2(p.model, p.release, p.config, seed=p.seed).to(device)
            expected = f"SAM {p.release} {p.model}" if p.config is None else "SAM 2 custom"
            return load_checkpoint(build_sam2(p.model, p.release, p.config), checkpoint, expected=expected).to(device)

        sam = shared_models.get(("sam2", architecture, source, device), build, owner=self)
        self.segmenter = BoxSegmenter(sam)

    def unload(self) -> None:
        super().unload()
        self.segmenter = None

    def _checkpoint_path(self) -> Path:
        from recognize.hub import resolve_path
        from recognize_sam2.cards import card_for, checkpoint_filename

        p = self.params
        return resolve_path(p.checkpoint, card_for(p.model, p.release), checkpoint_filename(p.model, p.release))

    def process(self, frames: list[Frame]) -> list[Frame]:
        todo = [frame for frame in frames if frame.regions]
        size = self.params.batch_size
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            embeddings = self.segmenter.embed([frame.image for frame in chunk])
            for frame, embedding in zip(chunk, embeddings):
                boxes = np.array([region.box for region in frame.regions], dtype=np.float64)
                result = self.segmenter.segment(embedding, boxes, multimask=self.params.multimask)
                names_zh = {tag.name: tag.name_zh for tag in frame.tags if tag.name_zh}
                for region, mask, score in zip(frame.regions, result.masks, result.scores):
                    region.mask = mask
                    region.mask_score = float(score)
                    if region.tag_zh is None:
                        region.tag_zh = names_zh.get(region.tag)
        return frames
