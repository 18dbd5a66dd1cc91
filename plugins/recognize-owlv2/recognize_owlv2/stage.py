"""The `owlv2` localizer stage: an image's tags are OWLv2's text queries; every patch box whose best
query scores above `box_threshold` becomes a region of that query's tag."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from recognize.detections import add_localized_regions
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
from recognize_owlv2.cards import Variant


class Owlv2Params(StageParams):
    """How to build OWLv2, what to ask it for, and which boxes to keep."""

    model: Variant = Field("base_patch16_ensemble", description="released OWLv2 checkpoint")
    checkpoint: str | None = Field(None, description="local weights (.safetensors or .bin); default: the cached file")
    config: dict[str, Any] | None = Field(
        None, description="custom architecture {projection_dim, text_config, vision_config} instead of `model`"
    )
    weights: Literal["checkpoint", "random"] = Field(
        "checkpoint", description="`random`: seeded random initialisation, for tests and benchmarks only"
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed of the random initialisation")
    box_threshold: float = Field(0.1, ge=0.0, le=1.0, description="keep boxes whose best query scores above this")
    classes: list[str] | None = Field(None, description="fixed class list; default: each frame's tags")
    query_template: str = Field("{}", description="text around each tag, e.g. 'a photo of a {}'")
    nms: Literal["per_tag", "cross_tag", "none"] = "per_tag"
    nms_threshold: float = Field(0.3, ge=0.0, le=1.0, description="IoU above which a lower-scored box is dropped")
    device: Device = "auto"
    batch_size: int = Field(1, ge=1, le=4096, description="images per forward pass")

    @model_validator(mode="after")
    def _consistent(self) -> Owlv2Params:
        if self.config is not None and self.weights == "checkpoint" and not self.checkpoint:
            raise ValueError("a custom `config` has no released weights: give `checkpoint` or set `weights: random`")
        if "{}" not in self.query_template:
            raise ValueError("query_template must contain {} where the tag goes")
        return self


class Owlv2(Stage):
    """OWLv2 open-vocabulary detection with the frame's tags as queries.

    Regions get the tag's exact name and its Chinese name; scores are OWLv2's sigmoid class
    scores. Boxes come in the padded square OWLv2 sees and are clipped to the image.
    """

    name: ClassVar[str] = "owlv2"
    kind: ClassVar[StageKind] = "localizer"
    Params: ClassVar[type[StageParams]] = Owlv2Params
    params: Owlv2Params

    def model_files(self) -> list[FileRef]:
        """The released weights of `model`, unless `checkpoint` is given or the weights are random; first
        the installed transformers is checked (before any download: `recognize.versions`)."""
        from recognize.versions import require
        from recognize_owlv2.cards import WEIGHTS, card_name

        require("transformers", "5.2", "owlv2", "this plugin's tests find no boxes with 5.0 and 5.1, and the 4.x "
                "line lacks the tokenizer API it uses")

        p = self.params
        if p.weights == "random" or p.checkpoint:
            return []
        return [FileRef(card_name(p.model), WEIGHTS)]

    def load(self) -> None:
        from transformers import Owlv2ImageProcessor

        from recognize_owlv2.model import build_owlv2, image_size, load_checkpoint

        p = self.params
        self.device = resolve_device(p.device)
        checkpoint = None if p.weights == "random" else self._checkpoint_path().resolve()
        source = ("random", p.seed) if checkpoint is None else str(checkpoint)
        architecture = repr(sorted(p.config.items())) if p.config is not None else p.model

        def build() -> Any:
            if checkpoint is None:
                return build_owlv2(p.model, p.config, seed=p.seed).to(self.device)
            expected = f"OWLv2 {p.model}" if p.config is None else "OWLv2 custom"
            return load_checkpoint(build_owlv2(p.model, p.config), checkpoint, expected=expected).to(self.device)

        self.model = shared_models.get(("owlv2", architecture, source, self.device), build, owner=self)
        size = image_size(self.model)
        self.processor = Owlv2ImageProcessor(size={"height": size, "width": size})

    def unload(self) -> None:
        super().unload()
        self.model = None

    def _checkpoint_path(self) -> Path:
        from recognize.hub import resolve_path
        from recognize_owlv2.cards import WEIGHTS, card_for

        return resolve_path(self.params.checkpoint, card_for(self.params.model), WEIGHTS)

    def _vocabulary(self, frame: Frame) -> tuple[str, ...]:
        if self.params.classes is not None:
            return tuple(self.params.classes)
        return tuple(dict.fromkeys(t.name for t in frame.tags))

    def process(self, frames: list[Frame]) -> list[Frame]:
        todo = [(frame, vocabulary) for frame in frames if (vocabulary := self._vocabulary(frame))]
        for start in range(0, len(todo), self.params.batch_size):
            chunk = todo[start : start + self.params.batch_size]
            results = self.detect([frame.image for frame, _ in chunk], [vocabulary for _, vocabulary in chunk])
            for (frame, vocabulary), (boxes, scores, labels) in zip(chunk, results):
                self._add_regions(frame, vocabulary, boxes, scores, labels)
        return frames

    def detect(self, images: list[np.ndarray], vocabularies: list[tuple[str, ...]]) -> list[tuple[np.ndarray, ...]]:
        """Per image: xyxy pixel boxes, scores and query indices of the boxes above the threshold."""
        import torch  # here, not at import: registering the stage must stay light

        with torch.inference_mode():
            return self._detect(images, vocabularies)

    def _detect(self, images: list[np.ndarray], vocabularies: list[tuple[str, ...]]) -> list[tuple[np.ndarray, ...]]:
        import torch

        from recognize.device_copies import to_device
        from recognize_owlv2.queries import CONTEXT, tokenize

        pixels = to_device(self.processor(images=list(images), return_tensors="pt")["pixel_values"], self.device)
        most = max(len(v) for v in vocabularies)
        # queries padded to the batch's longest list with all-zero ids, which OWLv2 masks out
        # (its query mask is "first token > 0"); the lone attended position keeps attention finite
        ids = torch.zeros(len(images), most, CONTEXT, dtype=torch.long)
        mask = torch.zeros(len(images), most, CONTEXT, dtype=torch.long)
        mask[..., 0] = 1
        for i, vocabulary in enumerate(vocabularies):
            ids[i, : len(vocabulary)], mask[i, : len(vocabulary)] = tokenize(vocabulary, self.params.query_template)
        out = self.model(
            input_ids=ids.flatten(0, 1).to(self.device),
            attention_mask=mask.flatten(0, 1).to(self.device),
            pixel_values=pixels,
        )
        results = []
        for i, (image, vocabulary) in enumerate(zip(images, vocabularies)):
            best, labels = out.logits[i, :, : len(vocabulary)].float().max(-1)
            scores = best.sigmoid()
            keep = scores > self.params.box_threshold
            height, width = image.shape[:2]
            side = float(max(height, width))  # boxes are relative to the padded square
            cx, cy, w, h = out.pred_boxes[i][keep].float().unbind(-1)
            xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1) * side
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
            inside = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])  # boxes wholly in the padding go
            results.append((
                xyxy[inside].cpu().numpy().astype(np.float64),
                scores[keep][inside].cpu().numpy(),
                labels[keep][inside].cpu().numpy(),
            ))
        return results

    def _add_regions(self, frame: Frame, vocabulary: tuple[str, ...], boxes: np.ndarray, scores: np.ndarray,
                     labels: np.ndarray) -> None:
        import supervision as sv

        if not len(boxes):
            return
        found = sv.Detections(xyxy=boxes, confidence=scores.astype(np.float64), class_id=labels.astype(int))
        add_localized_regions(frame, found, vocabulary, self.name, nms=self.params.nms,
                              nms_threshold=self.params.nms_threshold)
