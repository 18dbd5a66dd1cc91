"""The `tiled` localizer stage: any localizer, run on overlapping slices of a large image plus the
whole image, boxes mapped back to the image and duplicates merged (SAHI-style slicing).

Why: localizers resize their input (Grounding DINO to 800 px on the short side, OWLv2 to 960 px
square), so an object of a few dozen pixels in a 4000 px photo shrinks below what they can see.
On a slice it keeps its size. The whole-image pass keeps the objects that slices cut apart.

Slicing, offsets and batching are supervision's `InferenceSlicer`; duplicates across slices and
the whole image are removed in one class-aware pass of supervision's NMS (or NMM, which merges
boxes) over all of them, so a box is compared with the same object found anywhere else.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from recognize.frame import Frame, Region
from recognize.hub import FileRef
from recognize.stage import Device, Stage, StageKind, StageParams
from recognize_tiles.inner import LocalizerSpec, stage_class


class TiledParams(StageParams):
    """Where to slice, how to merge, and which localizer to run on every slice."""

    localizer: LocalizerSpec = Field(description="the localizer to run: {use: grounding_dino, with: {...}}")
    tile: tuple[int, int] = Field((640, 640), description="slice width and height in pixels (one number: square)")
    overlap: tuple[int, int] = Field((128, 128), description="overlap of neighbouring slices in pixels (w, h)")
    whole_image: bool = Field(True, description="also run the localizer on the whole image (finds what slices cut)")
    merge: Literal["nms", "nmm"] = Field(
        "nms", description="duplicates: `nms` keeps the best box, `nmm` merges overlapping boxes into one"
    )
    iou_threshold: float = Field(0.5, ge=0.0, le=1.0, description="boxes of one tag overlapping more are duplicates")
    batch_size: int = Field(1, ge=1, le=4096, description="slices per localizer call")
    device: Device = Field("auto", description="passed on to the localizer unless it sets its own")

    @field_validator("tile", "overlap", mode="before")
    @classmethod
    def _square(cls, value: Any) -> Any:
        return (value, value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _sizes(self) -> TiledParams:
        if min(self.tile) < 32 or max(self.tile) > 16384:
            raise ValueError(f"tile {self.tile}: sizes must be between 32 and 16384 pixels")
        if min(self.overlap) < 0 or any(o >= t for o, t in zip(self.overlap, self.tile)):
            raise ValueError(f"overlap {self.overlap} must be >= 0 and smaller than the tile {self.tile}")
        return self


class Tiled(Stage):
    """Runs `localizer` on overlapping tiles of images larger than `tile` (and on the whole image).

    Regions are the inner localizer's own (score, tag, Chinese name, source), with boxes in the
    image's pixels. Images that fit in one tile get the whole-image pass only.
    """

    name: ClassVar[str] = "tiled"
    kind: ClassVar[StageKind] = "localizer"
    Params: ClassVar[type[StageParams]] = TiledParams
    params: TiledParams

    def __init__(self, params: StageParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        spec = self.params.localizer
        self.inner: Stage = stage_class(spec.use)(spec.with_)
        if "device" in self.params.model_fields_set:  # unless the localizer names its own device
            self.inner.apply_defaults(device=self.params.device)

    def apply_defaults(self, **defaults: Any) -> None:
        super().apply_defaults(**defaults)
        self.inner.apply_defaults(**defaults)

    def model_files(self) -> list[FileRef]:
        """The inner localizer's files: checked (and fetched by `models download --recipe`) like its own."""
        return self.inner.model_files()

    def load(self) -> None:
        self.inner.ensure_loaded()

    def unload(self) -> None:
        super().unload()
        self.inner.unload()

    def process(self, frames: list[Frame]) -> list[Frame]:
        for frame in frames:
            frame.regions.extend(self.localize(frame))
        return frames

    def localize(self, frame: Frame) -> list[Region]:
        """The merged regions of one frame, in image coordinates."""
        import supervision as sv
        from supervision.detection.tools.inference_slicer import InferenceSlicer

        p = self.params
        image = frame.image
        height, width = image.shape[:2]
        needs_tiles = width > p.tile[0] or height > p.tile[1]
        found: list[Region] = []  # every region any pass found; detections point into it by index
        classes = {tag.name: i for i, tag in enumerate(frame.tags)}

        def detect(crops: list[np.ndarray]) -> list[sv.Detections]:
            return self._detect(crops, frame, classes, found)

        passes = []
        if p.whole_image or not needs_tiles:
            passes += detect([image])
        if needs_tiles:
            slicer = InferenceSlicer(
                callback=detect if p.batch_size > 1 else (lambda crop: detect([crop])[0]),
                slice_wh=p.tile,
                overlap_wh=p.overlap,
                overlap_filter="none",  # one NMS below, over the slices and the whole image together
                batch_size=p.batch_size,
            )
            passes.append(slicer(image))
        merged = sv.Detections.merge([d for d in passes if len(d)])
        if not len(merged):
            return []
        if p.merge == "nms":
            kept = merged.with_nms(threshold=p.iou_threshold, class_agnostic=False)
        else:
            kept = merged.with_nmm(threshold=p.iou_threshold, class_agnostic=False)
        regions = []
        for box, index in zip(kept.xyxy, kept.data["region"]):
            region = found[int(index)].model_copy()
            x0, y0, x1, y1 = (float(v) for v in box)
            region.box = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
            regions.append(region)
        return regions

    def _detect(
        self, crops: list[np.ndarray], frame: Frame, classes: dict[str, int], found: list[Region]
    ) -> list[Any]:
        """Run the inner localizer on crops of `frame` (with its tags); Detections in crop coordinates."""
        import supervision as sv

        pieces = [
            Frame.from_array(np.ascontiguousarray(crop), source=frame.source, tags=[t.model_copy() for t in frame.tags])
            for crop in crops
        ]
        out = []
        for piece in self.inner(pieces):
            start = len(found)
            found.extend(piece.regions)
            count = len(piece.regions)
            for region in piece.regions:
                classes.setdefault(region.tag, len(classes))
            out.append(
                sv.Detections(
                    xyxy=np.array([r.box for r in piece.regions], dtype=np.float64).reshape(count, 4),
                    confidence=np.array([0.0 if r.score is None else r.score for r in piece.regions], dtype=np.float64),
                    class_id=np.array([classes[r.tag] for r in piece.regions], dtype=int),
                    data={"region": np.arange(start, start + count)},
                )
            )
        return out
