"""The `json` output: `OUT/frames/<name>.json`, exactly `Frame.to_json()` (the versioned Frame schema).

The runner writes this file last for each image and reads it back (`read_frame`) for the
dataset-level outputs, one frame at a time, instead of keeping every frame in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from recognize.atomic import write_text
from recognize.errors import RecognizeError
from recognize.frame import Frame
from recognize.outputs.paths import output_path
from recognize.stage import OutputStage, StageParams


class JsonParams(StageParams):
    indent: int | None = Field(2, ge=0, le=16, description="JSON indent; None: one line")


class JsonOutput(OutputStage):
    """One JSON file per image, written atomically."""

    name: ClassVar[str] = "json"
    Params: ClassVar[type[StageParams]] = JsonParams

    def files(self, frame: Frame, out_dir: Path) -> list[Path]:
        return [output_path(frame, out_dir, ".json")]

    def write(self, frame: Frame, out_dir: Path) -> None:
        write_text(output_path(frame, out_dir, ".json"), frame.to_json(indent=self.params.indent) + "\n")

    def finish(self, frames: Sequence[Frame], out_dir: Path) -> None:
        """Nothing dataset-level: every frame already has its own file."""


def read_frame(path: str | Path) -> Frame:
    """Read back a frame written by the `json` output (a resumed run's finished image)."""
    try:
        return Frame.from_json(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecognizeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:  # bad JSON, or not the Frame schema (pydantic's ValidationError)
        first = str(exc).strip().splitlines()
        raise RecognizeError(f"{path}: not a recognize frame file ({first[0] if first else 'invalid'})") from None
