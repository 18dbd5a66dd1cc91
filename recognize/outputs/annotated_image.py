"""The `annotated_image` output: the picture with its boxes, masks, labels, tags and caption.

Boxes, masks and "tag score" labels are drawn by supervision's annotators on
`Frame.to_detections(compact_masks=True)` (masks semi-transparent in their tag's colour; labels placed with
supervision's `smart_position`, so crowded boxes do not pile their labels on each other); a band
below the image lists the image-level tags, the caption and a colour legend of the region tags,
wrapped to the image's width. Colours follow the tag name (a hash), so `dog` has the same
colour in every image of a run. Chinese names (`chinese: true`) need a CJK font: when none is
found the stage draws English names and says so once in the log, it never fails.
"""

from __future__ import annotations

import functools
import io
import logging
import zlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, field_validator

from recognize.atomic import write_bytes
from recognize.frame import Frame, Region
from recognize.outputs.fonts import find_font
from recognize.outputs.paths import output_path
from recognize.stage import OutputStage, StageParams

log = logging.getLogger(__name__)

_PANEL_BACKGROUND = (245, 245, 245)
_PANEL_TEXT = (20, 20, 20)
_PANEL_HEADING = (90, 90, 90)


class AnnotatedImageParams(StageParams):
    format: Literal["jpg", "png"] = "jpg"
    quality: int = Field(92, ge=1, le=100, description="JPEG quality")
    boxes: bool = True
    masks: bool = True
    labels: bool = True
    panel: bool = Field(True, description="band below the image with the image's tags and caption")
    scores: bool = Field(True, description="print scores after tag names")
    chinese: bool = Field(False, description="Chinese tag names where known (needs a CJK font)")
    font: str | None = Field(None, description="TrueType/OpenType font file for labels and the panel")
    mask_opacity: float = Field(0.45, ge=0.0, le=1.0)

    @field_validator("font")
    @classmethod
    def _font_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"font file {value!r} does not exist")
        return None if value is None else str(Path(value).expanduser())


def tag_color_index(name: str, palette_size: int) -> int:
    """A colour slot that depends on the tag name only (stable across images and runs)."""
    return zlib.crc32(name.encode("utf-8")) % palette_size


def _with_score(name: str, score: float | None, scores: bool) -> str:
    return f"{name} {score:.2f}" if scores and score is not None else name


class AnnotatedImage(OutputStage):
    """`OUT/frames/<name>.annotated.jpg` (or `.png`): a picture a person can check at a glance."""

    name: ClassVar[str] = "annotated_image"
    Params: ClassVar[type[StageParams]] = AnnotatedImageParams

    def __init__(self, params: StageParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self._warned_chinese = False

    # -- OutputStage ---------------------------------------------------------------------
    def files(self, frame: Frame, out_dir: Path) -> list[Path]:
        return [output_path(frame, out_dir, f".annotated.{self.params.format}")]

    def write(self, frame: Frame, out_dir: Path) -> None:
        write_bytes(self.files(frame, out_dir)[0], self.encode(frame))

    def encode(self, frame: Frame) -> bytes:
        """The annotated picture as the file's bytes (JPEG or PNG, per `format`).

        JPEG is encoded by OpenCV from the BGR picture `render_bgr` draws: the same bytes Pillow's
        encoder gives at the same quality (both libjpeg-turbo, 4:2:0, standard tables), without a
        colour conversion first, and OpenCV lets go of the GIL while it encodes (the writer thread
        runs beside the one that drives the GPU). PNG stays Pillow's (its compression settings)."""
        import cv2

        picture = self.render_bgr(frame)
        if self.params.format == "jpg":
            ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self.params.quality])
            if not ok:
                raise RuntimeError("OpenCV could not encode the annotated image as JPEG")
            return data.tobytes()
        buffer = io.BytesIO()
        Image.fromarray(cv2.cvtColor(picture, cv2.COLOR_BGR2RGB)).save(buffer, format="PNG")
        return buffer.getvalue()

    # -- drawing -------------------------------------------------------------------------
    def render(self, frame: Frame) -> Image.Image:
        """The annotated picture (RGB) for `frame`."""
        import cv2

        return Image.fromarray(cv2.cvtColor(self.render_bgr(frame), cv2.COLOR_BGR2RGB))

    def render_bgr(self, frame: Frame) -> np.ndarray:
        """The annotated picture as a BGR uint8 array (OpenCV's order, what supervision draws in).

        One array for the picture and the band below it: the photo is converted into its top rows
        once, and masks and boxes are drawn there in place. Drawing on a Pillow image instead (as
        before) converted the whole picture to BGR and back around each annotator, ~4 full-size
        copies per annotator. Masks go to supervision as a `CompactMask` cut to each mask's own
        extent, so its painter walks each mask's bounding box, not the whole picture per mask."""
        import cv2
        import supervision as sv

        p = self.params
        photo = frame.image
        height, width = photo.shape[:2]
        chinese = p.chinese and self._chinese_font(frame) is not None
        band = self._panel_band(width, frame, chinese) if p.panel else None
        picture = np.empty((height + (band.height if band is not None else 0), width, 3), dtype=np.uint8)
        scene = picture[:height]  # a view: what is drawn on it is drawn on `picture`
        cv2.cvtColor(photo, cv2.COLOR_RGB2BGR, dst=scene)
        if band is not None:
            cv2.cvtColor(np.asarray(band), cv2.COLOR_RGB2BGR, dst=picture[height:])
        if frame.regions:
            detections = frame.to_detections(compact_masks=True)
            palette = sv.ColorPalette.DEFAULT
            colors = np.array([tag_color_index(r.tag, len(palette.colors)) for r in frame.regions], dtype=np.int64)
            if p.masks and detections.mask is not None and detections.mask.shape[1:] == (height, width):
                _drawn_on(scene, sv.MaskAnnotator(color=palette, opacity=p.mask_opacity).annotate(
                    scene, detections, custom_color_lookup=colors
                ))
            if p.boxes:
                thickness = sv.calculate_optimal_line_thickness((width, height))
                _drawn_on(scene, sv.BoxAnnotator(color=palette, thickness=thickness).annotate(
                    scene, detections, custom_color_lookup=colors
                ))
            if p.labels:
                labels = [_with_score(self._region_name(r, chinese), r.score, p.scores) for r in frame.regions]
                annotator = self._label_annotator(labels, (width, height))
                if isinstance(annotator, sv.RichLabelAnnotator):
                    # Pillow draws these: one conversion there and back (supervision's own, on an
                    # array, makes a fifth full-size copy to put the result back)
                    image = Image.fromarray(cv2.cvtColor(scene, cv2.COLOR_BGR2RGB))
                    image = annotator.annotate(image, detections, labels=labels, custom_color_lookup=colors)
                    cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR, dst=scene)
                else:
                    _drawn_on(scene, annotator.annotate(scene, detections, labels=labels, custom_color_lookup=colors))
        return picture

    def _region_name(self, region: Region, chinese: bool) -> str:
        return (region.tag_zh or region.tag) if chinese else region.tag

    def _chinese_font(self, frame: Frame) -> str | None:
        """A font for the frame's Chinese names, or None (then English is drawn, with one warning)."""
        text = "".join([t.name_zh or "" for t in frame.tags] + [r.tag_zh or "" for r in frame.regions])
        if not text:
            return None
        font = find_font(text, self.params.font)
        if font is None and not self._warned_chinese:
            log.warning("no font that can draw Chinese was found (set `font:` or $RECOGNIZE_FONT); "
                        "drawing English tag names")
            self._warned_chinese = True
        return font

    def _label_annotator(self, labels: list[str], size: tuple[int, int]) -> Any:
        """supervision's PIL label annotator with a real font when one is found, else its OpenCV one."""
        import supervision as sv

        palette = sv.ColorPalette.DEFAULT
        font = find_font("".join(labels), self.params.font)
        text_scale = sv.calculate_optimal_text_scale(size)
        if font is not None:
            return sv.RichLabelAnnotator(
                color=palette, font_path=font, font_size=max(10, round(26 * text_scale)),
                text_padding=max(3, round(8 * text_scale)), smart_position=True,
            )
        return sv.LabelAnnotator(
            color=palette, text_scale=text_scale, text_thickness=max(1, round(2 * text_scale)),
            text_padding=max(3, round(8 * text_scale)), smart_position=True,
        )

    def _panel_band(self, width: int, frame: Frame, chinese: bool) -> Image.Image:
        """The band that goes below the picture: the image-level tags, the caption (wrapped to the
        width) and the legend of the region tags, RGB."""
        p = self.params
        names = [(t.name_zh or t.name) if chinese else t.name for t in frame.tags]
        tags_text = ", ".join(_with_score(n, t.score, p.scores) for n, t in zip(names, frame.tags)) or "(none)"
        sections = [("Tags", tags_text)]
        if frame.caption:
            sections.append(("Caption", frame.caption))
        size = max(12, round(width / 60))
        legend = self._legend(frame, chinese) if (p.masks or p.boxes) else []
        text = " ".join(s for _, s in sections) + "".join(label for label, _ in legend) + "Tags Caption Legend"
        font = _load_font(find_font(text, p.font), size)
        margin = max(6, size // 2)
        line_height = round(size * 1.3)
        lines: list[tuple[str, tuple[int, int, int]]] = []
        for heading, text in sections:
            lines.append((heading + ":", _PANEL_HEADING))
            lines += [(line, _PANEL_TEXT) for line in wrap_text(text, font, width - 2 * margin)]
        rows = layout_legend(legend, font, size, width - 2 * margin) if legend else []
        if rows:
            lines.append(("Legend:", _PANEL_HEADING))
        band = Image.new("RGB", (width, 2 * margin + line_height * (len(lines) + len(rows))), _PANEL_BACKGROUND)
        draw = ImageDraw.Draw(band)
        for i, (line, color) in enumerate(lines):
            draw.text((margin, margin + i * line_height), line, fill=color, font=font)
        swatch = max(8, round(size * 0.8))
        for r, row in enumerate(rows):
            y = margin + (len(lines) + r) * line_height
            for x, label, color in row:
                top = y + (line_height - swatch) // 2 - max(1, size // 10)
                draw.rectangle((margin + x, top, margin + x + swatch, top + swatch), fill=color, outline=_PANEL_TEXT)
                draw.text((margin + x + swatch + size // 3, y), label, fill=_PANEL_TEXT, font=font)
        return band

    def _legend(self, frame: Frame, chinese: bool) -> list[tuple[str, tuple[int, int, int]]]:
        """One entry per region tag: its name (and count) and the colour its boxes and masks have."""
        import supervision as sv

        palette = sv.ColorPalette.DEFAULT
        counts: dict[str, int] = {}
        names_zh: dict[str, str] = {}
        for region in frame.regions:
            counts[region.tag] = counts.get(region.tag, 0) + 1
            if region.tag_zh:
                names_zh.setdefault(region.tag, region.tag_zh)
        items = []
        for tag, count in counts.items():
            name = names_zh.get(tag, tag) if chinese else tag
            color = palette.by_idx(tag_color_index(tag, len(palette.colors))).as_rgb()
            items.append((f"{name} ×{count}" if count > 1 else name, color))
        return items


def layout_legend(items: list[tuple[str, tuple[int, int, int]]], font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
                  size: int, max_width: int) -> list[list[tuple[int, str, tuple[int, int, int]]]]:
    """Legend entries (swatch + label) packed left to right into rows no wider than `max_width`."""
    swatch, gap = max(8, round(size * 0.8)), size
    rows: list[list[tuple[int, str, tuple[int, int, int]]]] = [[]]
    x = 0
    for label, color in items:
        width = swatch + size // 3 + round(font.getlength(label))
        if rows[-1] and x + width > max_width:
            rows.append([])
            x = 0
        rows[-1].append((x, label, color))
        x += width + gap
    return rows if rows[0] else []


@functools.lru_cache(maxsize=32)  # one parse per font file and size, not one per image
def _load_font(path: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            log.warning("cannot load font %s; using PIL's default font", path)
    return ImageFont.load_default(size)


def wrap_text(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, max_width: int) -> list[str]:
    """Greedy word wrap by rendered width; a word wider than the line is split by characters."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        for ch in word:
            if current and font.getlength(current + ch) > max_width:
                lines.append(current)
                current = ""
            current += ch
    if current:
        lines.append(current)
    return lines or [""]


def _drawn_on(scene: np.ndarray, out: np.ndarray) -> None:
    """supervision 0.31's annotators draw on the array they are given and return it; should a release
    return a new array instead, its drawing is copied back rather than silently lost."""
    if out is not scene:
        scene[...] = out
