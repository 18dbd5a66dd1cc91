"""`recognize eval regions`: score boxes and masks against a COCO ground truth.

The scoring is pycocotools' `COCOeval`, unchanged (the reference implementation of the COCO
metrics); this module only turns Frames into COCO results: it matches each Frame to a ground
truth image by file name and each region's tag to a category by name. Regions whose tag is not
a category, and annotated images that have no Frame, are counted and reported, never dropped
silently; the evaluation covers the ground truth images that have a Frame.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from recognize.errors import ImageError, InputError
from recognize.frame import Frame, mask_to_rle

IouType = Literal["bbox", "segm"]

#: `COCOeval.stats`, in order
STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")

ProgressFactory = Callable[[int], Any]


def load_ground_truth(path: str | os.PathLike[str]):  # -> pycocotools.coco.COCO
    """A COCO instances file, validated first (`recognize.eval.coco_ground_truth`): a malformed
    file is one line naming the place, never a traceback from inside pycocotools."""
    from pycocotools.coco import COCO

    from recognize.eval.coco_ground_truth import read_ground_truth

    coco = COCO()
    coco.dataset = read_ground_truth(path)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


@dataclass
class RegionEvaluation:
    """COCO metrics per IoU type and what the matching left out."""

    stats: dict[str, dict[str, float]]  #: iou type -> STAT_NAMES -> value (-1: no ground truth)
    reports: dict[str, str]  #: iou type -> COCOeval.summarize() text
    images_evaluated: int
    images_in_ground_truth: int
    regions: int
    unmatched_frames: list[str] = field(default_factory=list)  #: frames that name no annotated image
    unknown_tags: dict[str, int] = field(default_factory=dict)  #: region tag -> count, not a category
    missing: list[str] = field(default_factory=list)  #: annotated images with no file / frame
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "images_in_ground_truth": self.images_in_ground_truth,
            "images_evaluated": self.images_evaluated,
            "images_missing": len(self.missing),
            "images_unreadable": len(self.unreadable),
            "frames_not_in_ground_truth": len(self.unmatched_frames),
            "regions": self.regions,
            "regions_with_unknown_tags": sum(self.unknown_tags.values()),
            "unknown_tags": dict(sorted(self.unknown_tags.items())),
            "metrics": self.stats,
        }


class _ImageIndex:
    """Ground-truth image ids by file name (relative path, then base name when unambiguous)."""

    def __init__(self, coco) -> None:
        self.by_path: dict[str, int] = {}
        names: Counter[str] = Counter()
        for image in coco.dataset["images"]:
            self.by_path[PurePosixPath(image["file_name"]).as_posix()] = image["id"]
            names[PurePosixPath(image["file_name"]).name] += 1
        self.by_name = {PurePosixPath(image["file_name"]).name: image["id"]
                        for image in coco.dataset["images"] if names[PurePosixPath(image["file_name"]).name] == 1}

    def lookup(self, source: str, images_dir: Path | None) -> int | None:
        path = Path(source)
        if images_dir is not None:
            with contextlib.suppress(ValueError):
                relative = path.resolve().relative_to(images_dir.resolve()).as_posix()
                if relative in self.by_path:
                    return self.by_path[relative]
        if path.as_posix() in self.by_path:
            return self.by_path[path.as_posix()]
        return self.by_name.get(path.name)


def _category_ids(coco) -> tuple[dict[str, int], dict[str, int]]:
    exact = {c["name"]: c["id"] for c in coco.dataset["categories"]}
    folded = {c["name"].strip().lower(): c["id"] for c in coco.dataset["categories"]}
    return exact, folded


def coco_results(
    frames: Iterable[Frame], coco, images_dir: str | os.PathLike[str] | None = None
) -> tuple[dict[int, Frame], list[dict[str, Any]], list[dict[str, Any]], list[str], Counter[str]]:
    """Frames -> (frame per image id, bbox results, segm results, unmatched sources, unknown tags)."""
    index = _ImageIndex(coco)
    exact, folded = _category_ids(coco)
    images_dir = Path(images_dir) if images_dir is not None else None
    matched: dict[int, Frame] = {}
    boxes: list[dict[str, Any]] = []
    masks: list[dict[str, Any]] = []
    unmatched: list[str] = []
    unknown: Counter[str] = Counter()
    for frame in frames:
        image_id = index.lookup(frame.source, images_dir)
        if image_id is None:
            unmatched.append(frame.source)
            continue
        if image_id in matched:
            raise InputError(f"two frames ({matched[image_id].source}, {frame.source}) match the same "
                             f"ground truth image {coco.imgs[image_id]['file_name']!r}")
        matched[image_id] = frame
        info = coco.imgs[image_id]
        for region in frame.regions:
            category = exact.get(region.tag, folded.get(region.tag.strip().lower()))
            if category is None:
                unknown[region.tag] += 1
                continue
            x0, y0, x1, y1 = (float(v) for v in region.box)
            score = 1.0 if region.score is None else float(region.score)
            base = {"image_id": image_id, "category_id": category, "score": score}
            boxes.append({**base, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            if region.mask is not None:
                if region.mask.shape != (info["height"], info["width"]):
                    raise InputError(f"{frame.source}: a {region.tag!r} mask is {region.mask.shape[1]}x"
                                     f"{region.mask.shape[0]} but the ground truth image is "
                                     f"{info['width']}x{info['height']}")
                masks.append({**base, "segmentation": mask_to_rle(region.mask)})
    return matched, boxes, masks, unmatched, unknown


def _evaluate(coco, results: list[dict[str, Any]], iou_type: IouType, image_ids: list[int]) -> tuple[dict, str]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if results:
            detections = coco.loadRes(results)
        else:  # loadRes cannot take an empty list; no detections is a valid (zero) result
            detections = COCO()
            detections.dataset = {"images": coco.dataset["images"], "categories": coco.dataset["categories"],
                                  "annotations": []}
            detections.createIndex()
        evaluator = COCOeval(coco, detections, iou_type)
        evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        evaluator.summarize()
    return dict(zip(STAT_NAMES, (float(v) for v in evaluator.stats))), report.getvalue()


def evaluate_regions(
    frames: Iterable[Frame],
    annotations: str | os.PathLike[str],
    *,
    images_dir: str | os.PathLike[str] | None = None,
    iou_types: Sequence[IouType] | None = None,
    coco=None,
) -> RegionEvaluation:
    """COCO box (and mask) metrics of `frames` on the ground truth images they match.

    `iou_types` None: `bbox`, plus `segm` when regions carry masks and the ground truth has them.
    `coco`: `load_ground_truth(annotations)` when the caller already has it (the file is read once).
    """
    coco = coco if coco is not None else load_ground_truth(annotations)
    matched, boxes, masks, unmatched, unknown = coco_results(frames, coco, images_dir)
    if not matched:
        raise InputError(f"no frame matches an image of {annotations} (by file name)")
    gt_masks = all("segmentation" in a for a in coco.dataset["annotations"])
    if iou_types is None:
        iou_types = ["bbox", "segm"] if masks and gt_masks else ["bbox"]
    if "segm" in iou_types and not gt_masks:
        raise InputError(f"{annotations}: mask scoring needs a `segmentation` on every annotation")
    stats: dict[str, dict[str, float]] = {}
    reports: dict[str, str] = {}
    for iou_type in iou_types:
        stats[iou_type], reports[iou_type] = _evaluate(coco, boxes if iou_type == "bbox" else masks,
                                                       iou_type, list(matched))
    missing = [coco.imgs[i]["file_name"] for i in sorted(coco.imgs) if i not in matched]
    return RegionEvaluation(
        stats=stats,
        reports=reports,
        images_evaluated=len(matched),
        images_in_ground_truth=len(coco.imgs),
        regions=sum(len(f.regions) for f in matched.values()),
        unmatched_frames=unmatched,
        unknown_tags=dict(unknown),
        missing=missing,
    )


def run_on_ground_truth(
    pipeline, annotations: str | os.PathLike[str], images_dir: str | os.PathLike[str],
    progress: ProgressFactory | None = None, coco=None,
) -> tuple[list[Frame], list[str], list[tuple[str, str]]]:
    """Run `pipeline` on the ground truth's images found in `images_dir`.

    Returns (frames without pixels, file names missing from the folder, unreadable (name, reason)).
    `coco`: `load_ground_truth(annotations)` when the caller already has it.
    """
    coco = coco if coco is not None else load_ground_truth(annotations)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: no such images folder")
    found: list[tuple[str, Path]] = []
    missing: list[str] = []
    for image in coco.dataset["images"]:
        path = images_dir / image["file_name"]
        if path.is_file():
            found.append((image["file_name"], path))
        else:
            missing.append(image["file_name"])
    if not found:
        raise InputError(f"none of the {len(coco.imgs)} images of {annotations} is in {images_dir}")
    frames: list[Frame] = []
    unreadable: list[tuple[str, str]] = []
    bar = progress(len(found)) if progress is not None else None
    readable: list[Frame] = []
    try:
        for name, path in found:
            frame = Frame(source=str(path), name=PurePosixPath(name).with_suffix("").as_posix())
            try:
                frame.image  # noqa: B018 - decode now: a bad file is reported, not fatal
            except ImageError as exc:
                unreadable.append((name, str(exc)))
                if bar is not None:
                    bar.update(1)
                continue
            readable.append(frame)
            if not pipeline.has_dataset_stage and len(readable) == pipeline.batch_size:
                frames.extend(_finish(pipeline.process_batch(readable), bar))
                readable = []
        if readable:
            done = pipeline.process(readable) if pipeline.has_dataset_stage else pipeline.process_batch(readable)
            frames.extend(_finish(done, bar))
    finally:
        if bar is not None:
            bar.close()
    if not frames and unreadable:
        raise InputError(f"none of the images of {annotations} in {images_dir} could be read "
                         f"(first: {unreadable[0][1]})")
    return frames, missing, unreadable


def _finish(frames: list[Frame], bar: Any) -> list[Frame]:
    for frame in frames:
        frame.release_image()
    if bar is not None:
        bar.update(len(frames))
    return frames


def read_frames(folder: str | os.PathLike[str]) -> list[Frame]:
    """The Frames a `recognize run` wrote: its shards (`OUT/shards/part-*.jsonl`, the `shards`
    output), else its per-image files (`OUT/frames/**/<name>.json`; any folder of Frame JSON files)."""
    from recognize.outputs.shards import read_shards, shard_files

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such predictions folder")
    if shard_files(folder):
        return list(read_shards(folder))
    frames = []
    root = folder / "frames" if (folder / "frames").is_dir() else folder  # a run's per-image results
    for path in sorted(root.rglob("*.json")):
        if path.name == "summary.json" and path.parent == folder:
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a JSON file ({exc})") from None
        except RecursionError:
            raise InputError(f"{path}: JSON nested too deeply") from None
        if not isinstance(data, dict) or "source" not in data or "schema_version" not in data:
            continue  # another output's JSON (e.g. a COCO file), not a Frame
        try:
            frames.append(Frame.model_validate(data))
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
            detail = " ".join(str(exc).split("\n")[:2]) if str(exc) else type(exc).__name__
            raise InputError(f"{path}: not a valid Frame ({detail})") from None
    if not frames:
        raise InputError(f"{folder}: no Frame JSON files (the per-image files `recognize run` writes)")
    return frames

