"""A COCO instances file checked before pycocotools sees it.

pycocotools trusts its input: a bbox of three numbers is an IndexError deep in `COCOeval`, a
polygon of two points a C-level error, a corrupt compressed RLE decodes to garbage (or reads past
the string), an annotation of an image or category that does not exist is silently indexed. So the
file is validated here with pydantic models (types, lengths, bounds), then as a whole (unique ids,
references that resolve, RLE sizes that match their image and counts that cover it exactly), and
every problem is one line naming the place: `gt.json: annotations[3].bbox: ...`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    field_validator,
)

from recognize.errors import InputError
from recognize.images import max_pixels

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]


class _Open(BaseModel):
    """COCO files carry extra fields (license, coco_url, supercategory...): kept, not checked."""

    model_config = ConfigDict(extra="allow")


class GtImage(_Open):
    id: StrictInt
    file_name: Annotated[StrictStr, Field(min_length=1, max_length=4096)]
    width: PositiveInt
    height: PositiveInt

    @field_validator("file_name")
    @classmethod
    def _a_path(cls, name: str) -> str:
        if "\x00" in name:
            raise ValueError("a file name cannot contain a NUL character")
        return name


class GtCategory(_Open):
    id: StrictInt
    name: Annotated[StrictStr, Field(min_length=1)]


class Rle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    size: tuple[PositiveInt, PositiveInt]  #: [height, width]
    counts: Annotated[
        Annotated[StrictStr, Tag("compressed")] | Annotated[list[Annotated[StrictInt, Field(ge=0)]], Tag("runs")],
        Discriminator(lambda value: "compressed" if isinstance(value, str) else "runs"),
    ]


Polygon = Annotated[list[Number], Field(min_length=6)]
Polygons = Annotated[list[Polygon], Field(min_length=1)]
#: a list is polygons, an object is RLE: errors then speak of the one the file meant
Segmentation = Annotated[
    Annotated[Polygons, Tag("polygons")] | Annotated[Rle, Tag("rle")],
    Discriminator(lambda value: "rle" if isinstance(value, (dict, Rle)) else "polygons"),
]


class GtAnnotation(_Open):
    id: StrictInt
    image_id: StrictInt
    category_id: StrictInt
    bbox: tuple[Number, Number, Number, Number]
    iscrowd: Literal[0, 1] = 0
    area: Annotated[Number, Field(ge=0)] | None = None
    segmentation: Segmentation | None = None

    @field_validator("bbox", mode="before")
    @classmethod
    def _four_numbers(cls, bbox: Any) -> Any:
        if isinstance(bbox, list) and len(bbox) != 4:
            raise ValueError(f"expected 4 numbers [x, y, width, height], got {len(bbox)}")
        return bbox

    @field_validator("bbox")
    @classmethod
    def _size_not_negative(cls, bbox: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if bbox[2] < 0 or bbox[3] < 0:
            raise ValueError("width and height must be >= 0 ([x, y, width, height])")
        return bbox

    @field_validator("segmentation")
    @classmethod
    def _polygons_are_points(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, polygon in enumerate(value):
                if len(polygon) % 2:
                    raise ValueError(f"polygon {i} has an odd number of coordinates ({len(polygon)}); "
                                     "a polygon is [x1, y1, x2, y2, ...] with at least 3 points")
        return value


class GtFile(_Open):
    images: list[GtImage]
    annotations: list[GtAnnotation]
    categories: Annotated[list[GtCategory], Field(min_length=1)]


def rle_string_counts(counts: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' `rleFrString`, checked).

    Each run is a little-endian base-32 number in characters 48..111; bit 0x20 continues, bit 0x10
    of the last character is the sign, and runs after the second are deltas of the run two back.
    """
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise ValueError("ends in the middle of a run")
            code = ord(counts[pos]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {counts[pos]!r} at {pos} is not RLE")
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            pos += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift
            if shift > 60:
                raise ValueError("a run is too long")
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError(f"run {len(runs)} is negative")
        runs.append(value)
    return runs


def validate_ground_truth(data: Any, source: str) -> dict[str, Any]:
    """The COCO dict, checked and completed (`iscrowd`, `area` filled in); raises InputError."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: a COCO file is a JSON object with `images`, `annotations` and `categories`; "
                         f"got a JSON {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise InputError(f"{source}: a COCO file needs `images`, `annotations` and `categories` "
                         f"(missing: {', '.join(missing)})")
    try:
        parsed = GtFile.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{source}: {_first_error(exc)}") from None
    images = _unique(parsed.images, "images", source)
    categories = _unique(parsed.categories, "categories", source)
    _unique(parsed.annotations, "annotations", source)
    limit = max_pixels()
    for i, image in enumerate(parsed.images):
        if image.width * image.height > limit:
            raise InputError(f"{source}: images[{i}]: {image.width}x{image.height} is more than the limit of "
                             f"{limit} pixels (RECOGNIZE_MAX_PIXELS)")
    for i, ann in enumerate(parsed.annotations):
        where = f"{source}: annotations[{i}]"
        if ann.image_id not in images:
            raise InputError(f"{where}.image_id: {ann.image_id} is no image id of the file")
        if ann.category_id not in categories:
            raise InputError(f"{where}.category_id: {ann.category_id} is no category id of the file")
        image = images[ann.image_id]
        if isinstance(ann.segmentation, Rle):
            _check_rle(ann.segmentation, image, f"{where}.segmentation")
        elif ann.segmentation is not None:
            _check_polygons(ann.segmentation, image, f"{where}.segmentation")
    out = parsed.model_dump(mode="python", exclude_none=True)
    for ann in out["annotations"]:
        ann["bbox"] = list(ann["bbox"])
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, dict):
            segmentation["size"] = list(segmentation["size"])
    return out


def _check_polygons(polygons: list[list[float]], image: GtImage, where: str) -> None:
    """Points stay near their image: pycocotools rasterises each edge point by point, so a vertex at
    1e12 costs memory and time without bound (a whole image's width of slack each side is allowed)."""
    for i, polygon in enumerate(polygons):
        xs, ys = polygon[0::2], polygon[1::2]
        if (min(xs) < -image.width or max(xs) > 2 * image.width
                or min(ys) < -image.height or max(ys) > 2 * image.height):
            raise InputError(f"{where}[{i}]: points far outside image {image.id} "
                             f"({image.width}x{image.height}); polygons are in pixels of their image")


def _check_rle(rle: Rle, image: GtImage, where: str) -> None:
    height, width = rle.size
    if (height, width) != (image.height, image.width):
        raise InputError(f"{where}.size: [{height}, {width}] but image {image.id} is "
                         f"[{image.height}, {image.width}] (height, width)")
    if isinstance(rle.counts, str):
        try:
            runs = rle_string_counts(rle.counts)
        except ValueError as exc:
            raise InputError(f"{where}.counts: not a valid compressed RLE ({exc})") from None
    else:
        runs = rle.counts
    if sum(runs) != height * width:
        raise InputError(f"{where}.counts: the runs cover {sum(runs)} pixels, the image has {height * width}")


def _unique(items: list[Any], name: str, source: str) -> dict[int, Any]:
    by_id: dict[int, Any] = {}
    for i, item in enumerate(items):
        if item.id in by_id:
            raise InputError(f"{source}: {name}[{i}].id: {item.id} is used twice in `{name}`")
        by_id[item.id] = item
    return by_id


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    err = errors[0]
    path = ""
    for part in err["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("polygons", "rle", "compressed", "runs") or "[" in str(part) or str(part).startswith(("function-", "tuple")):
            continue  # pydantic's union-branch names: not a place in the file
        else:
            path += f".{part}" if path else str(part)
    got = err.get("input")
    got_text = "" if isinstance(got, (dict, list)) else f" (got {_short(got)})"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{path}: {err['msg'].removeprefix('Value error, ')}{got_text}{more}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_ground_truth(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a COCO instances file (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such COCO annotation file")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 JSON file (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not a JSON file ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply") from None
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    return validate_ground_truth(data, str(path))


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number COCO allows")


__all__ = ["GtAnnotation", "GtCategory", "GtFile", "GtImage", "Rle", "read_ground_truth", "rle_string_counts",
           "validate_ground_truth"]
