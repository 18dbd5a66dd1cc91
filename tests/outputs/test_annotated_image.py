"""The `annotated_image` output: supervision's boxes, masks and labels plus a tags/caption panel."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import supervision as sv
from PIL import Image, ImageFont

from recognize.frame import Frame, Region
from recognize.outputs import annotated_image as ai
from recognize.outputs import fonts
from recognize.outputs.annotated_image import AnnotatedImage, tag_color_index, wrap_text

from .conftest import IMAGES, make_frame

LATIN_FONTS = fonts.candidates(cjk=False)


def palette_rgb(tag: str) -> np.ndarray:
    palette = sv.ColorPalette.DEFAULT
    return np.array(palette.by_idx(tag_color_index(tag, len(palette.colors))).as_rgb())


def spy_labels(monkeypatch) -> list[list[str]]:
    """Record the labels handed to supervision's label annotators (they still draw)."""
    seen: list[list[str]] = []
    for cls in (sv.LabelAnnotator, sv.RichLabelAnnotator):
        original = cls.annotate

        def annotate(self, scene, detections, labels=None, custom_color_lookup=None, _original=original):
            seen.append(list(labels))
            return _original(self, scene, detections, labels=labels, custom_color_lookup=custom_color_lookup)

        monkeypatch.setattr(cls, "annotate", annotate)
    return seen


def previous_render(stage: AnnotatedImage, frame: Frame) -> Image.Image:
    """How `render` drew until it drew into one BGR array: supervision's annotators on a Pillow image
    (each converting it to BGR and back), dense N x H x W masks, the band pasted below. Kept here
    as the reference the faster drawing must match pixel for pixel."""
    p = stage.params
    image = Image.fromarray(frame.image)
    width, height = image.size
    chinese = p.chinese and stage._chinese_font(frame) is not None
    detections = frame.to_detections()
    if len(detections):
        palette = sv.ColorPalette.DEFAULT
        colors = np.array([tag_color_index(r.tag, len(palette.colors)) for r in frame.regions], dtype=np.int64)
        if p.masks and detections.mask is not None and detections.mask.shape[1:] == (height, width):
            image = sv.MaskAnnotator(color=palette, opacity=p.mask_opacity).annotate(
                image, detections, custom_color_lookup=colors)
        if p.boxes:
            thickness = sv.calculate_optimal_line_thickness((width, height))
            image = sv.BoxAnnotator(color=palette, thickness=thickness).annotate(
                image, detections, custom_color_lookup=colors)
        if p.labels:
            labels = [ai._with_score(stage._region_name(r, chinese), r.score, p.scores) for r in frame.regions]
            image = stage._label_annotator(labels, (width, height)).annotate(
                image, detections, labels=labels, custom_color_lookup=colors)
    if p.panel:
        band = stage._panel_band(width, frame, chinese)
        out = Image.new("RGB", (width, image.height + band.height))
        out.paste(image.convert("RGB"), (0, 0))
        out.paste(band, (0, image.height))
        image = out
    return image


def crowded_frame(scale: int = 4) -> Frame:
    """The shared frame plus masks that overlap, tie in area, run past their box and the picture's
    edge, an empty one, and a box-only region."""
    frame = make_frame("crowded", scale=scale)
    h, w = frame.height, frame.width
    square = np.zeros((h, w), bool)
    square[h // 3: h // 3 + 10 * scale, w // 2: w // 2 + 10 * scale] = True
    twin = np.roll(square, (4 * scale, 3 * scale), axis=(0, 1))  # the same area, overlapping
    edge = np.zeros((h, w), bool)
    edge[h - 8 * scale:, w - 20 * scale:] = True  # touches the bottom right corner
    frame.regions += [
        Region(box=(w / 2, h / 3, w / 2 + 2, h / 3 + 2), score=0.5, tag="cat", mask=square),  # mask overruns box
        Region(box=(w / 2, h / 3, w / 2 + 13 * scale, h / 3 + 14 * scale), score=0.45, tag="cup", mask=twin),
        Region(box=(w - 20.0 * scale, h - 8.0 * scale, w - 1.0, h - 1.0), score=0.3, tag="toy", mask=edge),
        Region(box=(1.0, 1.0, 9.0, 9.0), score=0.2, tag="speck", mask=np.zeros((h, w), bool)),
        Region(box=(5.0 * scale, 5.0 * scale, 30.0 * scale, 12.0 * scale), score=0.7, tag="ball"),
    ]
    return frame


PARAMS = [{}, {"masks": False}, {"boxes": False}, {"labels": False}, {"panel": False}, {"scores": False},
          {"mask_opacity": 1.0}, {"mask_opacity": 0.0}, {"boxes": False, "masks": False, "labels": False}]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults")
@pytest.mark.parametrize("make", [lambda: make_frame(scale=4), crowded_frame, lambda: crowded_frame(scale=1)],
                         ids=["shared", "crowded", "crowded-small"])
def test_render_is_pixel_for_pixel_the_previous_drawing(make, params: dict) -> None:
    frame = make()
    stage = AnnotatedImage(**params)
    np.testing.assert_array_equal(np.asarray(stage.render(frame)), np.asarray(previous_render(stage, frame)))
    assert not frame.image.flags.writeable or (frame.image == make().image).all()  # the photo is not drawn on


def test_render_without_a_font_is_the_previous_drawing(monkeypatch) -> None:
    """supervision's OpenCV label annotator (no TrueType font found) draws on the BGR array directly."""
    monkeypatch.setattr(ai, "find_font", lambda text, explicit=None: None)
    frame = crowded_frame()
    stage = AnnotatedImage()
    np.testing.assert_array_equal(np.asarray(stage.render(frame)), np.asarray(previous_render(stage, frame)))


@pytest.mark.parametrize("quality", [92, 60])
def test_jpeg_is_what_pillow_wrote_before(tmp_path: Path, quality: int) -> None:
    """OpenCV encodes now; the file must be the JPEG Pillow made of the same picture: the same
    quantisation tables and chroma subsampling, the same pixels once decoded (both libraries ship
    libjpeg-turbo, and here the bytes are the same; a build with another libjpeg may round a pixel
    differently, hence the small tolerance)."""
    frame = crowded_frame()
    stage = AnnotatedImage(quality=quality)
    stage.write(frame, tmp_path)
    before = tmp_path / "before.jpg"
    previous_render(stage, frame).save(before, format="JPEG", quality=quality)
    from PIL import JpegImagePlugin

    with Image.open(stage.files(frame, tmp_path)[0]) as now, Image.open(before) as then:
        assert now.quantization == then.quantization
        assert JpegImagePlugin.get_sampling(now) == JpegImagePlugin.get_sampling(then)
        a, b = np.asarray(now).astype(int), np.asarray(then).astype(int)
    assert a.shape == b.shape and np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05


def test_png_holds_the_rendered_pixels(tmp_path: Path) -> None:
    frame = crowded_frame()
    stage = AnnotatedImage(format="png")
    stage.write(frame, tmp_path)
    with Image.open(stage.files(frame, tmp_path)[0]) as image:
        np.testing.assert_array_equal(np.asarray(image), np.asarray(previous_render(stage, frame)))


def test_render_draws_masks_boxes_and_a_panel(frame_factory, monkeypatch) -> None:
    frame = frame_factory(scale=4)
    labels = spy_labels(monkeypatch)
    out = np.asarray(AnnotatedImage().render(frame))
    original = frame.image
    assert out.shape[1] == 320 and out.shape[0] > 240  # the panel is a band below the image
    assert labels == [["dog 0.88", "ball 0.64", "grass 0.41"]]
    top = out[:240].astype(int)
    assert np.abs(top[120, 100] - original[120, 100]).sum() > 30  # inside the dog mask: tinted
    assert (top[8, 160] == original[8, 160]).all()  # far from every region: untouched
    np.testing.assert_array_equal(top[176, 100], palette_rgb("dog"))  # the box's bottom edge
    panel = out[240:]
    assert (panel.sum(axis=2) < 200).any()  # dark text on the light band


def test_every_layer_can_be_switched_off(frame_factory) -> None:
    frame = frame_factory()
    stage = AnnotatedImage(boxes=False, masks=False, labels=False, panel=False)
    np.testing.assert_array_equal(np.asarray(stage.render(frame)), frame.image)


def test_colours_follow_the_tag_not_the_order(frame_factory) -> None:
    a, b = frame_factory("a", scale=4), frame_factory("b", scale=4)
    b.regions = b.regions[::-1]  # dog is class 0 in a, class 2 in b
    stage = AnnotatedImage(masks=False, labels=False, panel=False)
    pixel_a = np.asarray(stage.render(a))[176, 100]
    pixel_b = np.asarray(stage.render(b))[176, 100]
    np.testing.assert_array_equal(pixel_a, pixel_b)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_write_produces_the_named_file(tmp_path: Path, frame_factory, fmt: str) -> None:
    frame = frame_factory("sub/pic")
    stage = AnnotatedImage(format=fmt)
    (path,) = stage.files(frame, tmp_path)
    assert path == tmp_path / "frames" / "sub" / f"pic.annotated.{fmt}"
    stage.write(frame, tmp_path)
    with Image.open(path) as image:
        assert image.format == {"jpg": "JPEG", "png": "PNG"}[fmt] and image.width == 80 and image.height > 60
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_params_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        AnnotatedImage(format="gif")
    with pytest.raises(ValueError, match="does not exist"):
        AnnotatedImage(font=str(tmp_path / "missing.ttf"))


def test_chinese_without_a_cjk_font_falls_back_to_english(frame_factory, monkeypatch, caplog) -> None:
    monkeypatch.delenv("RECOGNIZE_FONT", raising=False)
    monkeypatch.setattr(fonts, "_fc_list", lambda pattern: [])
    monkeypatch.setattr(fonts, "_CJK_CANDIDATES", ())
    labels = spy_labels(monkeypatch)
    stage = AnnotatedImage(chinese=True)
    with caplog.at_level(logging.WARNING):
        stage.render(frame_factory())
        stage.render(frame_factory())
    assert labels[0] == ["dog 0.88", "ball 0.64", "grass 0.41"]
    assert sum("no font that can draw Chinese" in r.message for r in caplog.records) == 1  # said once


@pytest.mark.skipif(not LATIN_FONTS, reason="no TrueType font on this machine")
def test_chinese_names_are_used_when_a_font_covers_them(frame_factory, monkeypatch) -> None:
    # No CJK font is installed here, so pretend the Latin one covers everything: this checks
    # that the Chinese names are chosen, not how the glyphs look.
    monkeypatch.setattr(ai, "find_font", lambda text, explicit=None: LATIN_FONTS[0])
    labels = spy_labels(monkeypatch)
    AnnotatedImage(chinese=True).render(frame_factory())
    assert labels == [["狗 0.88", "球 0.64", "grass 0.41"]]


@pytest.mark.skipif(not LATIN_FONTS, reason="no TrueType font on this machine")
def test_font_coverage_is_checked() -> None:
    path = LATIN_FONTS[0]
    assert fonts.covers(path, "dog 0.88")
    assert fonts.find_font("dog", explicit=path) == path
    if not fonts.covers(path, "狗"):
        assert fonts.find_font("狗", explicit=path) != path


def test_wrap_text_fits_the_width() -> None:
    font = ImageFont.load_default(14)
    text = "a dog playing with a ball " * 6 + "x" * 80
    lines = wrap_text(text, font, 150)
    assert len(lines) > 3
    assert all(font.getlength(line) <= 150 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")


@pytest.mark.skipif(not IMAGES.is_dir(), reason="reference images not available")
def test_real_photo(tmp_path: Path) -> None:
    path = sorted(IMAGES.rglob("*.jpg"))[0]
    frame = Frame(source=str(path), name="photo")
    h, w = frame.image.shape[:2]
    mask = np.zeros((h, w), bool)
    mask[h // 4: h // 2, w // 4: w // 2] = True
    frame.regions = [Region(box=(w / 4, h / 4, w / 2, h / 2), score=0.77, tag="building", mask=mask)]
    frame.caption = "a photo used to check that the annotated image reads well at full size"
    stage = AnnotatedImage()
    stage.write(frame, tmp_path)
    with Image.open(stage.files(frame, tmp_path)[0]) as image:
        assert image.width == w and image.height > h


def test_the_panel_has_a_colour_legend_of_region_tags(frame_factory) -> None:
    frame = frame_factory(scale=4)
    frame.regions.append(frame.regions[0].model_copy())
    stage = AnnotatedImage()
    with_legend = np.asarray(stage.render(frame))
    assert [label for label, _ in stage._legend(frame, chinese=False)] == ["dog ×2", "ball", "grass"]
    assert [label for label, _ in stage._legend(frame, chinese=True)] == ["狗 ×2", "球", "grass"]
    panel = with_legend[240:]
    for tag in ("dog", "ball", "grass"):  # a solid swatch of each tag's colour is in the band
        assert (np.abs(panel.astype(int) - palette_rgb(tag)).sum(axis=2) == 0).sum() >= 25, tag
    plain = np.asarray(AnnotatedImage(boxes=False, masks=False).render(frame))
    assert plain.shape[0] < with_legend.shape[0]  # no regions drawn: no legend


def test_legend_rows_wrap_to_the_width() -> None:
    font = ImageFont.load_default(14)
    items = [(f"tag number {i}", (i, i, i)) for i in range(12)]
    rows = ai.layout_legend(items, font, 14, 300)
    assert len(rows) > 1 and sum(len(r) for r in rows) == 12
    for row in rows:
        assert row[0][0] == 0
        last_x, label, _ = row[-1]
        assert last_x + 11 + 4 + font.getlength(label) <= 300 or len(row) == 1


CJK_FONT = fonts.find_font("狗球")


@pytest.mark.skipif(CJK_FONT is None, reason="no CJK font installed (CI installs fonts-noto-cjk); "
                                             "test_chinese_without_a_cjk_font_falls_back_to_english checks the warning")
def test_chinese_names_render_with_a_real_cjk_font(frame_factory, caplog) -> None:
    frame = frame_factory(scale=4)
    with caplog.at_level(logging.WARNING):
        chinese = np.asarray(AnnotatedImage(chinese=True).render(frame))
    english = np.asarray(AnnotatedImage(chinese=False).render(frame))
    assert not [r for r in caplog.records if "font" in r.message]
    assert fonts.covers(CJK_FONT, "狗球")
    # the same layout with other glyphs: the picture and band differ where the names are drawn
    assert chinese.shape[1] == english.shape[1]
    assert (np.abs(chinese[:240].astype(int) - english[:240].astype(int)).sum(axis=2) > 60).sum() > 50
    # a CJK glyph rendered with that font has ink (not an empty "tofu" box drawn by a font without it)
    glyph = Image.new("L", (40, 40), 0)
    from PIL import ImageDraw

    ImageDraw.Draw(glyph).text((4, 4), "狗", fill=255, font=ImageFont.truetype(CJK_FONT, 30))
    ink = np.asarray(glyph) > 128
    assert 40 < ink.sum() < 900
