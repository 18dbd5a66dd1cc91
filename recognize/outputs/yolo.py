"""The `yolo` output: `OUT/labels/<name>.txt` per image, plus `OUT/data.yaml` and `OUT/classes.txt`.

`<name>` is the image's output name without its extension, the way Ultralytics pairs
`images/a/x.jpg` with `labels/a/x.txt`; two images that differ only by extension (`x.jpg`, `x.png`)
would share a label file, so such a run is refused before it starts.

Each line is `cls cx cy w h` (normalised), or `cls x1 y1 x2 y2 ...` (a normalised polygon,
one line per connected part, holes bridged) for a region with a mask; supervision writes the
lines (`detections_to_yolo_annotations`, its mask -> polygon helpers).

Class ids must mean the same thing in every label file of a run, yet per-image writes happen
before the run has seen all tags. Two designs, chosen by the `classes` parameter:

- `classes: [dog, cat, ...]` (a fixed list, e.g. to match an existing dataset): ids are the
  list's positions, label files are written per image as the run goes (and count for resume);
  regions whose tag is not in the list are left out (logged).
- no `classes` (default): ids are the sorted union of all region tags of the run, known only
  at the end, so every label file is written at `finish`, from all frames (resumed ones
  included: their regions and masks come back from their JSON, and the image size too, so no
  image is decoded). A re-run with more images renumbers consistently, as all files are
  rewritten together.

`copy_images: true` also copies each source image to `OUT/images/<name>` so that OUT
is a dataset Ultralytics can train on directly (`data.yaml` then names `images` as train/val).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import yaml
from pydantic import Field, field_validator

from recognize.atomic import atomic_write, write_text
from recognize.errors import RecognizeError
from recognize.frame import Frame
from recognize.outputs.paths import image_size, named_path, output_name
from recognize.stage import OutputStage, StageParams

log = logging.getLogger(__name__)


class YoloParams(StageParams):
    classes: list[str] | None = Field(None, description="fixed class list (ids = positions); default: all region tags")
    segments: bool = Field(True, description="polygons for regions with masks (else always boxes)")
    approximation: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of polygon points to drop")
    copy_images: bool = Field(False, description="copy the images to OUT/images for a ready-to-train dataset")

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            duplicates = sorted({c for c in value if value.count(c) > 1})
            if duplicates:
                raise ValueError(f"class names must be unique; repeated: {', '.join(duplicates)}")
            if not value:
                raise ValueError("give at least one class, or leave `classes` out to use every region tag")
        return value


class YoloOutput(OutputStage):
    """YOLO detection / segmentation labels with one class list for the whole run."""

    name: ClassVar[str] = "yolo"
    Params: ClassVar[type[StageParams]] = YoloParams

    # -- paths ---------------------------------------------------------------------------
    def label_path(self, frame: Frame, out_dir: Path) -> Path:
        return named_path(frame, Path(out_dir) / "labels", ".txt", drop_extension=True)

    def image_path(self, frame: Frame, out_dir: Path) -> Path:
        suffix = Path(frame.source).suffix if Path(frame.source).is_file() else ".png"
        return named_path(frame, Path(out_dir) / "images", "" if output_name(frame).endswith(suffix) else suffix)

    def claims(self, frame: Frame, out_dir: Path) -> list[Path]:
        found = [self.label_path(frame, out_dir)]
        if self.params.copy_images:
            found.append(self.image_path(frame, out_dir))
        return found

    def run_files(self) -> list[str]:
        return ["labels", "classes.txt", "data.yaml", *(["images"] if self.params.copy_images else [])]

    def files(self, frame: Frame, out_dir: Path) -> list[Path]:
        found = []
        if self.params.classes is not None:
            found.append(self.label_path(frame, out_dir))
        if self.params.copy_images:
            found.append(self.image_path(frame, out_dir))
        return found

    # -- writing -------------------------------------------------------------------------
    def write(self, frame: Frame, out_dir: Path) -> None:
        if self.params.copy_images:
            self._copy_image(frame, out_dir)
        if self.params.classes is not None:
            self._write_labels(frame, out_dir, self.params.classes)

    def finish(self, frames: Sequence[Frame], out_dir: Path) -> None:
        classes = self.params.classes
        if classes is None:  # two passes over the frames the runner streams from disk
            classes = sorted({region.tag for frame in frames for region in frame.regions})
            for frame in frames:
                self._write_labels(frame, out_dir, classes)
        out_dir = Path(out_dir)
        write_text(out_dir / "classes.txt", "".join(f"{c}\n" for c in classes))
        data: dict[str, object] = {}
        if self.params.copy_images:
            data.update({"train": "images", "val": "images"})
        data.update({"nc": len(classes), "names": dict(enumerate(classes))})
        write_text(out_dir / "data.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))

    def lines(self, frame: Frame, classes: list[str]) -> list[str]:
        """The label lines of `frame` with class ids from `classes`."""
        from supervision.dataset.formats.yolo import detections_to_yolo_annotations

        class_index = {c: i for i, c in enumerate(classes)}
        keep = [i for i, r in enumerate(frame.regions) if r.tag in class_index]
        if len(keep) < len(frame.regions):
            missing = sorted({r.tag for r in frame.regions if r.tag not in class_index})
            log.info("%s: regions of %s left out (not in the class list)", frame.source, ", ".join(missing))
        if not keep:
            return []
        width, height = image_size(frame)
        detections = frame.to_detections()[np.array(keep)]
        detections.class_id = np.array([class_index[frame.regions[i].tag] for i in keep], dtype=int)
        if not self.params.segments:
            detections.mask = None
        return detections_to_yolo_annotations(
            detections, image_shape=(height, width), approximation_percentage=self.params.approximation
        )

    def _write_labels(self, frame: Frame, out_dir: Path, classes: list[str]) -> None:
        # an image with no region still gets its (empty) file: YOLO reads that as "background"
        write_text(self.label_path(frame, out_dir), "".join(f"{line}\n" for line in self.lines(frame, classes)))

    def _copy_image(self, frame: Frame, out_dir: Path) -> None:
        target = self.image_path(frame, out_dir)
        source = Path(frame.source)
        if source.is_file():
            with source.open("rb") as src, atomic_write(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            return
        if frame._image is None:
            raise RecognizeError(f"{frame.source}: no image file to copy into the YOLO dataset")
        from PIL import Image

        with atomic_write(target, "wb") as dst:
            Image.fromarray(frame.image).save(dst, format="PNG")

