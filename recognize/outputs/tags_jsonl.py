"""The `tags_jsonl` output: one line per image with its final tags (and what was dropped), at `finish`.

The format training code reads for a tag dataset: `{"image": ..., "tags": [...], ...}` per line, in
run order. `image` follows the `coco` output's rule (relative to `image_root` when set, else the
output name plus the source's suffix) so the two files name images alike. Each tag carries its
score and the stage that produced it (a tag given with the image has no score); `dropped` lists the
`Drop`s of that image so a line is auditable on its own.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from recognize.atomic import atomic_write
from recognize.frame import Frame
from recognize.outputs.paths import check_plain_name, dataset_file_name, image_size
from recognize.stage import OutputStage, StageParams


class TagsJsonlParams(StageParams):
    filename: str = Field("tags.jsonl", description="file name inside the output folder")
    image_root: str | None = Field(None, description="folder that `image` is relative to")
    include_dropped: bool = Field(True, description="list each image's dropped tags and regions")

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        return check_plain_name(value)


class TagsJsonl(OutputStage):
    """Per-image tags of the whole run as JSON Lines."""

    name: ClassVar[str] = "tags_jsonl"
    Params: ClassVar[type[StageParams]] = TagsJsonlParams

    def path(self, out_dir: Path) -> Path:
        return Path(out_dir) / self.params.filename

    def run_files(self) -> list[str]:
        return [self.params.filename]

    def record(self, frame: Frame) -> dict[str, Any]:
        width, height = image_size(frame)
        record: dict[str, Any] = {
            "image": dataset_file_name(frame, self.params.image_root),
            "width": width,
            "height": height,
            "tags": [t.name for t in frame.tags],
            "tag_details": [
                {k: v for k, v in (("name", t.name), ("name_zh", t.name_zh), ("score", t.score),
                                   ("source", t.source)) if v is not None}
                for t in frame.tags
            ],
            "regions": len(frame.regions),
        }
        if frame.caption is not None:
            record["caption"] = frame.caption
        if self.params.include_dropped:
            record["dropped"] = [d.model_dump(mode="json", exclude_none=True) for d in frame.dropped]
        return record

    def finish(self, frames: Sequence[Frame], out_dir: Path) -> None:
        with atomic_write(self.path(out_dir)) as handle:
            for frame in frames:
                handle.write(json.dumps(self.record(frame), ensure_ascii=False) + "\n")
