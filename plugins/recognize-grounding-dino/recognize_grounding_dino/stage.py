"""The `grounding_dino` localizer stage: each frame's tags (or a fixed class list) in, boxes out.

A box is kept when its best token clears `box_threshold`, and its score is that token's
probability: both exactly as the reference `predict` does. Each box then carries exactly one
tag of the frame's vocabulary: its token scores become whole-tag scores (a tag scores its best
token among the tokens that spell it), and the best tag wins when it clears `text_threshold`
(that tag score is kept in `region.meta['tag_score']`). Duplicates are then removed per tag,
across tags, or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from recognize.detections import add_localized_regions
from recognize.fast_modes import (
    Precision,
    Quantization,
    autocast,
    cap_regions,
    quantize_linear_int8,
)
from recognize.frame import Drop, Frame
from recognize.hub import FileRef
from recognize.stage import (
    Device,
    Stage,
    StageKind,
    StageParams,
    resolve_device,
    shared_models,
)
from recognize_grounding_dino.cards import CHECKPOINTS

if TYPE_CHECKING:  # pragma: no cover - these import torch/torchvision: loaded in load()/process() only
    import torch

    from recognize_grounding_dino.model import Detector
    from recognize_grounding_dino.prompts import Packing, Prompt

VOCAB_CARD, VOCAB_FILE = "bert-base-uncased-vocab", "vocab.txt"


class GroundingDino(Stage):
    """Open-vocabulary boxes for an image's tags with Grounding DINO."""

    name: ClassVar[str] = "grounding_dino"
    kind: ClassVar[StageKind] = "localizer"

    class Params(StageParams):
        model: Literal["swint_ogc", "swinb"] = "swint_ogc"
        checkpoint: str | None = Field(None, description="local checkpoint; default: the cached official file")
        config: str | dict[str, Any] | None = Field(
            None, description="transformers GroundingDinoConfig values (JSON file or dict) laid over the model's preset")
        vocab: str | None = Field(None, description="BERT vocab.txt; default: the bert-base-uncased-vocab card")
        box_threshold: float = Field(0.35, ge=0.0, le=1.0)
        text_threshold: float = Field(0.25, ge=0.0, le=1.0)
        classes: list[str] | None = Field(None, description="fixed class list; default: each frame's tags")
        nms: Literal["per_tag", "cross_tag", "none"] = "per_tag"
        nms_threshold: float = Field(0.5, ge=0.0, le=1.0)
        image_size: int = Field(800, ge=32, le=4096, description="short side the image is resized to (reference: 800)")
        max_size: int | None = Field(1333, ge=32, le=8192, description="cap on the long side (reference: 1333)")
        device: Device = "auto"
        batch_size: int = Field(1, ge=1, le=4096)
        # fast modes (recognize.fast_modes): the defaults are the exact path
        dtype: Precision = Field("float32", description="fast mode: autocast the model to bfloat16/float16")
        quantize: Quantization = Field(
            "none", description="fast mode: int8: torchao int8 Linear layers in the image backbone and transformer")
        max_regions: int | None = Field(
            None, ge=0, le=100_000, description="fast mode: keep only the N best-scoring boxes per image; the rest are dropped")

    def model_files(self) -> list[FileRef]:
        """The preset's official checkpoint and the BERT vocabulary, each unless a local file is given;
        first the installed transformers is checked (`versions.check_transformers`: before any download)."""
        from recognize_grounding_dino.versions import check_transformers

        check_transformers()
        card, filename = CHECKPOINTS[self.params.model]
        refs = [] if self.params.checkpoint else [FileRef(card, filename)]
        return refs if self.params.vocab else [*refs, FileRef(VOCAB_CARD, VOCAB_FILE)]

    def load(self) -> None:
        from recognize.hub import resolve_path
        from recognize_grounding_dino.model import Detector

        p = self.params
        card, filename = CHECKPOINTS[p.model]
        checkpoint = resolve_path(p.checkpoint, card, filename)
        vocab = resolve_path(p.vocab, VOCAB_CARD, VOCAB_FILE)
        device = resolve_device(p.device)
        config = json.dumps(p.config, sort_keys=True) if isinstance(p.config, dict) else p.config
        key = ("grounding_dino", p.model, str(Path(checkpoint).resolve()), str(Path(vocab).resolve()), config, device,
               p.quantize)

        def build() -> Detector:
            detector = Detector.load(p.model, checkpoint, vocab, config=p.config, device=device)
            if p.quantize == "int8":  # the text encoder runs once per caption (cached): not worth quantising
                quantize_linear_int8(detector.model, include=lambda name: not name.startswith("model.text_backbone"))
            return detector

        self.detector: Detector = shared_models.get(key, build, owner=self)
        self._packings: dict[tuple[str, ...], Packing] = {}

    # -- prompts ------------------------------------------------------------------------
    def _packing(self, tags: tuple[str, ...]) -> Packing:
        packing = self._packings.get(tags)
        if packing is None:
            if len(self._packings) > 1024:
                self._packings.clear()
            packing = self._packings[tags] = self.detector.pack(list(tags))
        return packing

    def _vocabulary(self, frame: Frame) -> tuple[str, ...]:
        if self.params.classes is not None:
            return tuple(self.params.classes)
        return tuple(dict.fromkeys(t.name for t in frame.tags))

    # -- the stage ----------------------------------------------------------------------
    def unload(self) -> None:
        super().unload()
        self.detector = None

    def prepare(self, frame: Frame) -> None:
        """The reference resize of the image (Pillow, the costly part), made ahead by the engine."""
        frame.prepare_ahead(*self._resize_job())

    def _resize_job(self) -> tuple[tuple[str, int, int | None], Callable[[np.ndarray], Any]]:
        from recognize_grounding_dino.transforms import resize

        size, max_size = self.params.image_size, self.params.max_size
        return ("grounding_dino_input", size, max_size), lambda image: resize(image, size, max_size)

    def process(self, frames: list[Frame]) -> list[Frame]:
        import torch

        from recognize_grounding_dino.transforms import to_pixels

        p = self.params
        key, resize = self._resize_job()
        vocabularies = [self._vocabulary(f) for f in frames]
        pixels: dict[int, torch.Tensor] = {}
        jobs: dict[tuple[tuple[Prompt, ...], tuple[int, ...]], list[int]] = {}
        for i, (frame, vocabulary) in enumerate(zip(frames, vocabularies)):
            packing = self._packing(vocabulary)
            for index, reason in packing.unplaced:
                frame.dropped.append(Drop(item="tag", tag=vocabulary[index], stage=self.name, reason=reason))
            if not packing.prompts:
                continue
            pixels[i] = to_pixels(frame.prepared(key, resize))
            # one model call per caption and image size: results never depend on batch neighbours;
            # frames with the same captions share a batch, whose image features serve every caption
            jobs.setdefault((packing.prompts, tuple(pixels[i].shape)), []).append(i)

        found: dict[int, list[tuple[np.ndarray, float, str, float]]] = {i: [] for i in pixels}
        for (prompts, _shape), members in jobs.items():
            for start in range(0, len(members), p.batch_size):
                chunk = members[start:start + p.batch_size]
                with autocast(self.detector.device, p.dtype):
                    results = self.detector.detect(torch.stack([pixels[i] for i in chunk]), prompts)
                for prompt, (probs, boxes) in zip(prompts, results):
                    for row, i in enumerate(chunk):
                        found[i].extend(self._select(probs[row], boxes[row], prompt, frames[i], vocabularies[i]))

        for i, detections in found.items():
            self._add_regions(frames[i], detections)
            cap_regions(frames[i], p.max_regions, self.name)
        return frames

    def _select(self, probs: torch.Tensor, boxes: torch.Tensor, prompt: Prompt, frame: Frame,
                vocabulary: tuple[str, ...]) -> list[tuple[np.ndarray, float, str, float]]:
        """Boxes of one image and caption -> (xyxy pixels, box score, tag, tag score) for boxes naming a tag."""
        import torch

        p = self.params
        box_scores = probs.amax(-1)
        keep = box_scores > p.box_threshold
        if not bool(keep.any()):
            return []
        tag_scores = prompt.tag_scores(probs[keep])
        best_score, best = tag_scores.max(-1)
        width, height = frame.image.shape[1], frame.image.shape[0]
        cx, cy, w, h = boxes[keep].unbind(-1)
        xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        xyxy = xyxy * torch.tensor([width, height, width, height], dtype=xyxy.dtype)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        out = []
        for box, score, tag_score, tag in zip(xyxy.numpy(), box_scores[keep].tolist(), best_score.tolist(),
                                              best.tolist()):
            if tag_score > p.text_threshold and box[2] > box[0] and box[3] > box[1]:
                out.append((box, float(score), vocabulary[prompt.tags[tag]], float(tag_score)))
        return out

    def _add_regions(self, frame: Frame, detections: list[tuple[np.ndarray, float, str, float]]) -> None:
        import supervision as sv

        if not detections:
            return
        names = list(dict.fromkeys(tag for _, _, tag, _ in detections))
        found = sv.Detections(
            xyxy=np.stack([box for box, _, _, _ in detections]).astype(np.float32),
            confidence=np.array([score for _, score, _, _ in detections], dtype=np.float32),
            class_id=np.array([names.index(tag) for _, _, tag, _ in detections], dtype=int),
            data={"tag_score": np.array([t for _, _, _, t in detections], dtype=np.float32)},
        )
        add_localized_regions(frame, found, names, self.name, nms=self.params.nms,
                              nms_threshold=self.params.nms_threshold, meta_keys=("tag_score",))
