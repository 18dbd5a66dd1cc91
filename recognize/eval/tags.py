"""`recognize eval tags`: score a recipe's tagger on an official tagging benchmark.

mAP needs every class's score for every image, not only the tags above threshold, so this
evaluation does not run the whole pipeline: it takes the recipe's tagger stage and calls its
`score_images(images) -> [B, V]` (sigmoid scores over its vocabulary) batch by batch, keeps the
columns of the benchmark's classes, and reads CP/CR/... at the tagger's own per-class
thresholds. The metrics are those of `recognize.eval.metrics`.

Differences from the official `batch_inference.py`, on purpose: images are read by
`recognize.images.load_image` (EXIF orientation applied, as in every other command; the official
loader ignores it); an image that is listed but absent or unreadable is reported and left out,
where the official loader scores a black 10x10 image in its place.

A tagger stage makes itself evaluable by exposing, once loaded, `score_images` and its
vocabulary: `stage.vocabulary.names` / `stage.vocabulary.thresholds` (one per score column), or
the same as `stage.tag_names` / `stage.thresholds`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recognize.atomic import atomic_write
from recognize.errors import ImageError, InputError, RecognizeError
from recognize.eval.datasets import Annotations, Taglist, find_image, read_annotations, read_taglist, vocabulary_columns
from recognize.eval.metrics import TagMetrics, tag_metrics
from recognize.images import load_image
from recognize.stage import Stage

ProgressFactory = Callable[[int], Any]  # total -> object with update(n) and close()


def find_tagger(stages: Sequence[Stage], name: str | None = None) -> Stage:
    """The stage to evaluate: the one named `name`, else the first tagger."""
    for stage in stages:
        if (name is None and stage.kind == "tagger") or (name is not None and stage.name == name):
            from recognize.capabilities import ImageScorer

            if not isinstance(stage, ImageScorer):
                raise RecognizeError(f"stage {stage.name!r} has no score_images() (it is no ImageScorer), so it "
                                     "cannot be scored for mAP; name another stage with --stage")
            return stage
    used = ", ".join(f"{s.name} ({s.kind})" for s in stages) or "none"
    wanted = f"stage named {name!r}" if name else "tagger stage"
    raise InputError(f"the recipe has no {wanted}; its stages: {used}")


def tagger_vocabulary(stage: Stage) -> tuple[list[str], np.ndarray]:
    """Names and per-class thresholds of the tagger's score columns (loads the stage)."""
    stage.ensure_loaded()
    holder = getattr(stage, "vocabulary", None)
    if holder is None or not hasattr(holder, "names"):
        holder = stage
    names = getattr(holder, "names", None) or getattr(holder, "tag_names", None)
    thresholds = getattr(holder, "thresholds", None)
    if names is None or thresholds is None:
        raise RecognizeError(f"stage {stage.name!r} does not expose its vocabulary "
                             "(vocabulary.names and vocabulary.thresholds)")
    names = [str(n) for n in names]
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(names),)).copy()
    return names, thresholds


@dataclass
class TagEvaluation:
    """Scores, ground truth and metrics of one benchmark run."""

    taglist: Taglist
    annotations: Annotations
    stage: str
    columns: np.ndarray  #: vocabulary column of each taglist class
    evaluated: list[str]  #: image names scored, in annotation order
    scores: np.ndarray  #: [evaluated, classes]
    targets: np.ndarray  #: [evaluated, classes]
    metrics: TagMetrics
    missing: list[str] = field(default_factory=list)  #: listed but not found in the images folder
    unreadable: list[tuple[str, str]] = field(default_factory=list)  #: (name, reason)

    def summary(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "annotations": self.annotations.path,
            "taglist": self.taglist.path,
            "classes": len(self.taglist),
            "classes_without_positives": int((self.metrics.ap.positives == 0).sum()),
            "images_listed": len(self.annotations.images),
            "images_evaluated": len(self.evaluated),
            "images_missing": len(self.missing),
            "images_unreadable": len(self.unreadable),
            "prediction_rule": "score >= threshold (official batch_inference.py)",
            "metrics": self.metrics.summary(),
        }

    def write_per_class_csv(self, path: str | os.PathLike[str]) -> None:
        """One row per class: AP (percent, as the official ap.txt), precision, recall, counts."""
        m = self.metrics
        with atomic_write(path, "w") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["tag", "column", "AP", "precision", "recall", "threshold", "positives",
                             "predicted", "true_positives"])
            for k, name in enumerate(self.taglist.names):
                writer.writerow([
                    name, int(self.columns[k]), f"{m.ap.ap[k] * 100:.4f}", f"{m.pr.precision[k] * 100:.4f}",
                    f"{m.pr.recall[k] * 100:.4f}", f"{m.thresholds[k]:.6g}", int(m.ap.positives[k]),
                    int(m.pr.tp[k] + m.pr.fp[k]), int(m.pr.tp[k]),
                ])


def evaluate_tags(
    stage: Stage,
    images_dir: str | os.PathLike[str],
    annotations: str | os.PathLike[str],
    taglist: str | os.PathLike[str],
    *,
    batch_size: int | None = None,
    workers: int = 2,
    progress: ProgressFactory | None = None,
    require_all: bool = False,
) -> TagEvaluation:
    """Score every annotated image found in `images_dir` and compute the benchmark metrics.

    Images listed but absent are collected in `missing` (or, with `require_all`, an error);
    unreadable ones in `unreadable`. Neither is scored, and the metrics cover the rest.
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: no such images folder")
    tags = read_taglist(taglist)
    truth = read_annotations(annotations, tags)

    found: list[tuple[int, Path]] = []
    missing: list[str] = []
    for row, name in enumerate(truth.images):
        path = find_image(images_dir, name)
        if path is None:
            missing.append(name)
        else:
            found.append((row, path))
    if missing and require_all:
        raise InputError(f"{len(missing)} of {len(truth.images)} annotated images are not in {images_dir} "
                         f"(first: {missing[0]!r})")
    if not found:
        raise InputError(f"none of the {len(truth.images)} images listed in {truth.path} is in {images_dir} "
                         f"(first: {truth.images[0]!r})")

    vocabulary, thresholds = tagger_vocabulary(stage)  # loads the model: after the cheap checks
    columns = vocabulary_columns(tags, vocabulary)
    batch_size = batch_size or int(getattr(stage.params, "batch_size", 0) or 8)
    scores, ok, unreadable = _score_files(stage, [p for _, p in found], columns, batch_size, workers, progress)
    if not any(ok):
        raise InputError(f"none of the {len(found)} annotated images in {images_dir} could be read "
                         f"(first: {unreadable[0][1]})")
    rows = [row for (row, _), good in zip(found, ok) if good]
    targets = truth.targets[rows]
    return TagEvaluation(
        taglist=tags,
        annotations=truth,
        stage=stage.name,
        columns=columns,
        evaluated=[truth.images[row] for row in rows],
        scores=scores,
        targets=targets,
        metrics=tag_metrics(scores, targets, thresholds[columns]),
        missing=missing,
        unreadable=[(truth.images[found[i][0]], reason) for i, reason in unreadable],
    )


def open_set_overrides(
    recipe: str | os.PathLike[str],
    taglist: str | os.PathLike[str],
    *,
    stage: str | None = None,
    descriptions: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
) -> list[str]:
    """`--set` overrides that make the recipe's tagger recognise exactly the taglist's classes.

    The tagger's `tags` parameter gets the taglist file. A tagger with a `descriptions`
    parameter (RAM++) also gets the LLM descriptions JSON: `descriptions`, else the file the
    official layout keeps beside the taglist (`<dataset>_llm_tag_descriptions.json`).
    """
    from recognize import plugins
    from recognize.recipe import load_recipe

    spec = load_recipe(recipe, list(overrides))
    for index, item in enumerate(spec.stages):
        cls = plugins.get_stage(item.use)
        if (stage is None and cls.kind == "tagger") or (stage is not None and item.use == stage):
            break
    else:
        raise InputError(f"{recipe}: no {'stage ' + repr(stage) if stage else 'tagger stage'} to make open-set")
    fields = cls.Params.model_fields
    if "tags" not in fields:
        raise InputError(f"stage {item.use!r} has no open-set mode (no `tags` parameter)")
    result = [f"stages.{index}.with.tags={_yaml_str(taglist)}"]
    if "descriptions" in fields:
        if descriptions is None:
            stem = Path(taglist).stem
            for suffix in ("_ram_taglist", "_taglist"):
                if stem.endswith(suffix):
                    stem = stem[: -len(suffix)]
                    break
            beside = Path(taglist).with_name(f"{stem}_llm_tag_descriptions.json")
            descriptions = beside if beside.is_file() else None
        if descriptions is not None:
            result.append(f"stages.{index}.with.descriptions={_yaml_str(descriptions)}")
    return result


def _yaml_str(value: str | os.PathLike[str]) -> str:
    """A YAML single-quoted scalar, so a path is never read as a number, list or mapping."""
    return "'" + str(value).replace("'", "''") + "'"


def _score_files(
    stage: Stage,
    paths: list[Path],
    columns: np.ndarray,
    batch_size: int,
    workers: int,
    progress: ProgressFactory | None,
) -> tuple[np.ndarray, list[bool], list[tuple[int, str]]]:
    """Scores [found, classes] of the readable files; decoding overlaps scoring."""
    scores = np.zeros((len(paths), len(columns)), dtype=np.float32)
    ok = [False] * len(paths)
    unreadable: list[tuple[int, str]] = []
    bar = progress(len(paths)) if progress is not None else None

    def decode(index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return index, load_image(paths[index]), None
        except ImageError as exc:
            return index, None, str(exc)

    batches = [range(start, min(start + batch_size, len(paths))) for start in range(0, len(paths), batch_size)]
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            pending = [pool.map(decode, batches[0])] if batches else []
            for number in range(len(batches)):
                decoded = list(pending.pop())
                if number + 1 < len(batches):
                    pending.append(pool.map(decode, batches[number + 1]))
                good = [(i, image) for i, image, _ in decoded if image is not None]
                unreadable.extend((i, reason) for i, image, reason in decoded if image is None)
                if good:
                    out = np.asarray(stage.score_images([image for _, image in good]))
                    if out.ndim != 2 or out.shape[0] != len(good):
                        raise RecognizeError(f"stage {stage.name!r}: score_images returned shape {out.shape} "
                                             f"for {len(good)} images")
                    scores[[i for i, _ in good]] = out[:, columns]
                    for i, _ in good:
                        ok[i] = True
                if bar is not None:
                    bar.update(len(decoded))
    finally:
        if bar is not None:
            bar.close()
    return scores[ok], ok, unreadable
