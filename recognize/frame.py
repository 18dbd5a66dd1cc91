"""The one data type every stage reads and enriches: a `Frame` per image.

A Frame carries the image's identity and size, the tags, regions (box + optional mask) and
caption that stages add, and a free `meta` dict. The JSON a run writes is exactly
`Frame.to_json()`; `Frame.from_json()` reads it back (that is how a resumed run picks up
images it already finished).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_serializer,
    field_validator,
)

if TYPE_CHECKING:  # pragma: no cover
    import supervision as sv

SCHEMA_VERSION = 1
_T = TypeVar("_T")


class Tag(BaseModel):
    """One recognised tag of an image."""

    model_config = ConfigDict(extra="forbid")

    name: str
    name_zh: str | None = None
    score: float | None = None
    index: int | None = Field(None, description="index in the vocabulary that produced the tag")
    source: str | None = Field(None, description="name of the stage that produced the tag")


class Drop(BaseModel):
    """A tag or region a stage removed, and why (so a cleaned dataset can be audited)."""

    model_config = ConfigDict(extra="forbid")

    item: Literal["tag", "region"]
    tag: str
    stage: str
    reason: str
    value: float | None = None
    box: tuple[float, float, float, float] | None = None


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a boolean HxW mask, with `counts` as str so it is JSON-safe."""
    from pycocotools import mask as mask_utils

    if mask.dtype == bool and mask.ndim == 2 and mask.size:
        # the column-major copy pycocotools reads, made by OpenCV's transpose (~5x faster than
        # numpy's on a 13.8 MP mask, and without the GIL): the transpose of the mask's bytes,
        # C-ordered, is the mask in Fortran order
        import cv2

        fortran = cv2.transpose(mask.view(np.uint8)).T
    else:
        fortran = np.asfortranarray(mask.astype(np.uint8))
    rle = mask_utils.encode(fortran)
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    coded = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return mask_utils.decode(coded).astype(bool)


class Region(BaseModel):
    """A located instance of one tag: a box in pixels (xyxy), optionally a mask."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    box: tuple[float, float, float, float]
    score: float | None = None
    tag: str
    tag_zh: str | None = None
    mask: np.ndarray | None = None
    mask_score: float | None = None
    source: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("mask", mode="before")
    @classmethod
    def _decode_mask(cls, value: Any) -> np.ndarray | None:
        if value is None or isinstance(value, np.ndarray):
            return None if value is None else np.asarray(value, dtype=bool)
        if isinstance(value, dict):
            return rle_to_mask(value)
        raise ValueError("mask must be a boolean array or a COCO RLE dict")

    @field_serializer("mask")
    def _encode_mask(self, mask: np.ndarray | None) -> dict[str, Any] | None:
        return None if mask is None else mask_to_rle(mask)


class Frame(BaseModel):
    """One image and everything the pipeline learned about it."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    schema_version: int = SCHEMA_VERSION
    source: str = Field(description="path (or id) of the image")
    name: str | None = Field(None, description="output name, relative to the output folder, without suffix")
    width: int | None = None
    height: int | None = None
    tags: list[Tag] = Field(default_factory=list)
    regions: list[Region] = Field(default_factory=list)
    caption: str | None = None
    dropped: list[Drop] = Field(default_factory=list)
    meta: dict[str, Any] = Field(default_factory=dict)

    _image: np.ndarray | None = PrivateAttr(None)
    #: a stage's input made from `_image` ahead of time (`prepare_ahead`): key -> (the image it was made from, input)
    _prepared: dict[Hashable, tuple[np.ndarray, Any]] = PrivateAttr(default_factory=dict)

    # -- the image ---------------------------------------------------------------------
    @classmethod
    def from_array(cls, image: np.ndarray, source: str = "<array>", **fields: Any) -> Frame:
        """A frame around an RGB uint8 HxWx3 array already in memory."""
        from recognize.images import as_rgb_array

        image = as_rgb_array(image)
        frame = cls(source=source, width=image.shape[1], height=image.shape[0], **fields)
        frame._image = image
        return frame

    @property
    def image(self) -> np.ndarray:
        """RGB uint8 HxWx3, loaded from `source` on first use (EXIF orientation applied)."""
        if self._image is None:
            from recognize.images import load_image

            self._image = load_image(self.source)
            self.height, self.width = self._image.shape[:2]
        return self._image

    def release_image(self) -> None:
        """Drop the decoded pixels (a long run keeps only the results in memory), and the inputs made from them."""
        self._image = None
        self.drop_prepared()

    # -- stages' inputs, made ahead ----------------------------------------------------
    def prepare_ahead(self, key: Hashable, make: Callable[[np.ndarray], Any]) -> None:
        """Make a stage's input from the image now (`make(self.image)`) and keep it under `key`
        for `prepared(key, ...)`.

        Why: resizing a 12 MP photo to a model's input takes ~0.05 s per model, more than decoding
        it; an engine's prefetch thread calls `Stage.prepare` for the next batch while the current one
        computes, and the stage's `process` then reads the result. `key` names what the input is,
        everything it depends on besides the pixels (`("tagger_input", 384)`), so two stages that
        need the same input share one (RAM++ and Tag2Text at 384). The input is read-only: every stage
        of that key reads the same object, and a batch retried after a failure reads it again (an array
        is kept non-writeable). The engine drops what a batch kept when the batch is done (`drop_prepared`)."""
        image = self.image
        if self._current(key) is not None:  # another stage of the same input made it already
            return
        made = make(image)
        if isinstance(made, np.ndarray):
            made.flags.writeable = False  # shared by the stages that read it, and read again on a retry
        self._prepared[key] = (image, made)

    def prepared(self, key: Hashable, make: Callable[[np.ndarray], _T]) -> _T:
        """The input kept under `key` by `prepare_ahead`, if it was made from the image this frame
        holds now; else `make(self.image)`, which is not kept (without an engine that drops inputs,
        a frame kept in memory would carry every stage's input)."""
        kept = self._current(key)
        return kept[1] if kept is not None else make(self.image)

    def _current(self, key: Hashable) -> tuple[np.ndarray, Any] | None:
        """The `(image, input)` kept under `key` if it was made from the image this frame holds now."""
        kept = self._prepared.get(key)
        return kept if kept is not None and kept[0] is self._image else None

    def drop_prepared(self) -> None:
        """Forget the inputs made ahead (the engines call it when a batch leaves the stages)."""
        self._prepared = {}

    def __copy__(self) -> Frame:
        clone = super().__copy__()
        clone._prepared = {}  # pydantic copies the private dict shallowly: the copy would share this one
        return clone

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Frame:
        clone = super().__deepcopy__(memo)
        clone._prepared = {}  # inputs made from the original's pixels: of no use beside copied pixels
        return clone

    # -- convenience -------------------------------------------------------------------
    @property
    def tag_names(self) -> list[str]:
        return [t.name for t in self.tags]

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Frame:
        return cls.model_validate(json.loads(text))

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        return cls.model_json_schema(mode="serialization")

    # -- supervision -------------------------------------------------------------------
    def to_detections(self, compact_masks: bool = False) -> sv.Detections:
        """The regions as `supervision.Detections` (class ids index `tag_names` order of first use).

        `compact_masks`: the masks as supervision's `CompactMask`, each cut to its own extent (the
        box of its pixels, not the region's box, which a mask may overrun), instead of one dense
        N x H x W array; supervision's annotators then paint each mask over its extent only. The
        same pixels either way."""
        import supervision as sv

        if not self.regions:
            return sv.Detections.empty()
        classes = list(dict.fromkeys(r.tag for r in self.regions))
        # float64 so that Frame -> Detections -> Frame gives back the very same numbers
        xyxy = np.array([r.box for r in self.regions], dtype=np.float64)
        confidence = np.array([np.nan if r.score is None else r.score for r in self.regions], dtype=np.float64)
        class_id = np.array([classes.index(r.tag) for r in self.regions], dtype=int)
        masks = None
        if any(r.mask is not None for r in self.regions):
            shape = next(r.mask.shape for r in self.regions if r.mask is not None)
            h, w = (self.height, self.width) if self.height and self.width else shape
            if compact_masks and all(r.mask is None or r.mask.shape == (h, w) for r in self.regions):
                masks = _compact_masks([r.mask for r in self.regions], (h, w))
            else:
                masks = np.stack(
                    [r.mask if r.mask is not None else np.zeros((h, w), dtype=bool) for r in self.regions]
                )
        return sv.Detections(
            xyxy=xyxy,
            mask=masks,
            confidence=confidence,
            class_id=class_id,
            data={
                "class_name": np.array([r.tag for r in self.regions]),
                "class_name_zh": np.array([r.tag_zh or "" for r in self.regions]),
                "source": np.array([r.source or "" for r in self.regions]),
                "mask_score": np.array(
                    [np.nan if r.mask_score is None else r.mask_score for r in self.regions], dtype=np.float64
                ),
            },
        )

    def set_detections(self, detections: sv.Detections, source: str | None = None) -> None:
        """Replace the regions with `detections` (class names from `data['class_name']`)."""
        self.regions = regions_from_detections(detections, source=source)

    @classmethod
    def from_detections(cls, detections: sv.Detections, source: str = "<detections>", **fields: Any) -> Frame:
        """A frame holding `detections` as regions (image size taken from the masks when not given)."""
        if detections.mask is not None and len(detections) and "width" not in fields and "height" not in fields:
            fields = {"height": int(detections.mask.shape[1]), "width": int(detections.mask.shape[2]), **fields}
        return cls(source=source, regions=regions_from_detections(detections), **fields)


def _compact_masks(masks: list[np.ndarray | None], shape: tuple[int, int]) -> Any:
    """`supervision`'s `CompactMask` of HxW boolean masks (None: an empty one), each cropped to the
    bounding box of its pixels (OpenCV's `boundingRect` of a mask: one pass, without the GIL)."""
    import cv2
    from supervision.detection.compact_mask import CompactMask

    parts = []
    for mask in masks:
        if mask is None:
            mask, x, y, w, h = np.zeros((1, 1), dtype=bool), 0, 0, 0, 0
        else:
            mask = np.asarray(mask, dtype=bool)
            x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
        # supervision's boxes here are inclusive; an empty mask (w = h = 0) gets a 1x1 empty crop
        box = np.array([[x, y, x + w - 1, y + h - 1]], dtype=np.int64)
        parts.append(CompactMask.from_dense(mask[None], box, shape))
    return CompactMask.merge(parts)


def regions_from_detections(detections: sv.Detections, source: str | None = None) -> list[Region]:
    names = detections.data.get("class_name")
    names_zh = detections.data.get("class_name_zh")
    sources = detections.data.get("source")
    mask_scores = detections.data.get("mask_score")
    regions = []
    for i in range(len(detections)):
        if names is not None:
            tag = str(names[i])
        elif detections.class_id is not None:
            tag = str(int(detections.class_id[i]))
        else:
            tag = "object"
        conf = None if detections.confidence is None else float(detections.confidence[i])
        mask_score = None if mask_scores is None else float(mask_scores[i])
        regions.append(
            Region(
                box=tuple(float(v) for v in detections.xyxy[i]),
                score=None if conf is None or np.isnan(conf) else conf,
                tag=tag,
                tag_zh=(str(names_zh[i]) or None) if names_zh is not None else None,
                # an all-empty mask is how to_detections pads regions that have none
                mask=None if detections.mask is None or not detections.mask[i].any() else detections.mask[i],
                mask_score=None if mask_score is None or np.isnan(mask_score) else mask_score,
                source=source or ((str(sources[i]) or None) if sources is not None else None),
            )
        )
    return regions
