"""The `coco` output: one COCO instances file for the whole run, written at `finish`.

- images: `id` 1..N in run order, `file_name` = the source path relative to `image_root`
  when that is set (so `image_root/file_name` opens the image), else the output name plus the
  source's suffix; `width`, `height`; plus two extra fields, `tags` (image-level tags with
  scores and Chinese names) and `caption`, which COCO readers ignore.
- categories: the sorted union of all region tags, ids 1..K (1-based, like COCO), so ids
  are stable for a given set of tags whatever the image order; `name_zh` where known.
- annotations: `bbox` [x, y, w, h] in pixels, `area`, `iscrowd` 0, `score`, and
  `segmentation` as compressed RLE (pycocotools) when the region has a mask. A region with no
  mask has NO `segmentation` key: a box is not a segmentation, and an invented rectangle
  polygon would score as a real mask in segm evaluation. Such a file evaluates with
  `iouType="bbox"`; `segm` evaluation needs every region to carry a mask. `area` is the mask's
  pixel count when there is a mask, else the box's area.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from recognize.atomic import write_text
from recognize.frame import Frame, mask_to_rle
from recognize.outputs.paths import check_plain_name, dataset_file_name, image_size
from recognize.stage import OutputStage, StageParams

log = logging.getLogger(__name__)


class CocoParams(StageParams):
    filename: str = Field("coco.json", description="file name inside the output folder")
    image_root: str | None = Field(None, description="folder that `file_name` is relative to")
    indent: int | None = Field(None, ge=0, le=16, description="JSON indent; None: one line")

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_plain_name(value)


class CocoOutput(OutputStage):
    """A COCO instances dataset (ground-truth format, with scores) of the whole run."""

    name: ClassVar[str] = "coco"
    Params: ClassVar[type[StageParams]] = CocoParams

    def path(self, out_dir: Path) -> Path:
        return Path(out_dir) / self.params.filename

    def run_files(self) -> list[str]:
        return [self.params.filename]

    def finish(self, frames: Sequence[Frame], out_dir: Path) -> None:
        dataset = self.build(frames)
        write_text(self.path(out_dir), json.dumps(dataset, indent=self.params.indent, ensure_ascii=False) + "\n")

    # -- building the dataset ------------------------------------------------------------
    def build(self, frames: Iterable[Frame]) -> dict[str, Any]:
        """The COCO dict for `frames` (see the module docstring for the field choices).

        One pass over `frames` (the runner streams them from disk): annotations keep the tag name
        until the category ids, which depend on every tag, are known at the end.
        """
        names_zh: dict[str, str] = {}
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        for image_id, frame in enumerate(frames, start=1):
            for region in frame.regions:
                if region.tag_zh and region.tag not in names_zh:
                    names_zh[region.tag] = region.tag_zh
            width, height = image_size(frame)
            record: dict[str, Any] = {
                "id": image_id,
                "file_name": dataset_file_name(frame, self.params.image_root),
                "width": width,
                "height": height,
                "tags": [
                    {k: v for k, v in (("name", t.name), ("name_zh", t.name_zh), ("score", t.score)) if v is not None}
                    for t in frame.tags
                ],
            }
            if frame.caption is not None:
                record["caption"] = frame.caption
            images.append(record)
            for region in frame.regions:
                annotations.append(
                    self._annotation(len(annotations) + 1, image_id, region.tag, region, (height, width))
                )
        tags = sorted({annotation["category_id"] for annotation in annotations})
        category_id = {tag: i + 1 for i, tag in enumerate(tags)}
        for annotation in annotations:
            annotation["category_id"] = category_id[annotation["category_id"]]
        categories = []
        for tag in tags:
            category: dict[str, Any] = {"id": category_id[tag], "name": tag, "supercategory": "tag"}
            if tag in names_zh:
                category["name_zh"] = names_zh[tag]
            categories.append(category)
        return {
            "info": {"description": "written by recognize (coco output)"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }

    @staticmethod
    def _annotation(ann_id: int, image_id: int, cat_id: int | str, region, hw: tuple[int, int]) -> dict[str, Any]:
        x1, y1, x2, y2 = (float(v) for v in region.box)
        annotation: dict[str, Any] = {
            "id": ann_id,
            "image_id": image_id,
            "category_id": cat_id,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1),
            "iscrowd": 0,
        }
        if region.score is not None:
            annotation["score"] = float(region.score)
        if region.mask is not None:
            if tuple(region.mask.shape) != hw:
                log.warning("mask of %r is %s, image is %s: segmentation left out", region.tag, region.mask.shape, hw)
            else:
                annotation["segmentation"] = mask_to_rle(region.mask)
                annotation["area"] = float(region.mask.sum())
        return annotation

