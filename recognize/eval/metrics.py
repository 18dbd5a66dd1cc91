"""Multi-label tagging metrics, defined as the RAM benchmarks define them.

Sources (official code, xinyu1205/recognize-anything at 7cb804a):

- **AP** of a class (`ram/utils/metrics.py`, `_average_precision`): sort the images by score,
  highest first; AP is the sum, over the class's positive images, of the precision at that
  image's rank, divided by `positives + 1e-8`. So a class without positives has AP 0, and
  **mAP is the mean over all classes**, those included (`get_mAP`). `mean_average_precision`
  also reports the mean over the classes that have positives, so a small made-up annotation
  set is not misread.
- **Ties**: the official code orders tied scores with `argsort()[::-1]`, an unstable sort, so its
  result on ties depends on numpy's sort implementation. Here tied images are scored together
  (precision taken after the whole tied group), which is exactly scikit-learn's
  `average_precision_score`; without ties it equals the official value.
- **CP / CR** (`get_PR`, `batch_inference.py`): an image is predicted for a class when
  `score >= threshold` (batch_inference.py compares with `>=`), per class
  `P = TP / (TP + FP + 1e-9)` and `R = TP / (TP + FN + 1e-9)`; CP and CR are their means over
  all classes.
- **CF1, OP, OR, OF1** are not computed by the official code; we use the standard definitions of
  the multi-label literature (Chen et al., "Multi-Label Image Recognition with Graph
  Convolutional Networks", CVPR 2019, sec. 4.1; also Query2Label and ASL):
  `CF1 = 2 CP CR / (CP + CR)`, `OP = sum TP / sum (TP + FP)`, `OR = sum TP / sum (TP + FN)`,
  `OF1 = 2 OP OR / (OP + OR)` (0 when a denominator is 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the official code's guards against empty denominators
AP_EPS = 1e-8
PR_EPS = 1e-9

#: columns sorted at once; bounds memory to a few arrays of this many float64s
_CHUNK_ELEMENTS = 4_000_000


def _as_2d(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim == 1:
        scores = scores[:, None]
    if targets.ndim == 1:
        targets = targets[:, None]
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must both be [images, classes]")
    if scores.dtype.kind not in "fb":
        scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinity")
    return scores, targets.astype(bool)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP of `scores` [N, C] against 0/1 `targets` [N, C]: an array of C values.

    A 1-D pair gives a 1-element array. Classes without positives get 0 (official).
    """
    scores, targets = _as_2d(scores, targets)
    n, c = scores.shape
    ap = np.zeros(c, dtype=np.float64)
    if n == 0:
        return ap
    step = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, c, step):
        ap[start : start + step] = _average_precision_block(scores[:, start : start + step],
                                                            targets[:, start : start + step])
    return ap


def _average_precision_block(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    ranked_scores = np.take_along_axis(scores, order, axis=0)
    ranked_targets = np.take_along_axis(targets, order, axis=0)
    hits = np.cumsum(ranked_targets, axis=0, dtype=np.float64)
    # the last rank of each group of tied scores: precision is read there for the whole group
    group_end = np.empty(ranked_scores.shape, dtype=bool)
    group_end[:-1] = ranked_scores[:-1] != ranked_scores[1:]
    group_end[-1] = True
    rank = np.arange(n)[:, None]
    end_rank = np.where(group_end, rank, n)
    end_rank = np.minimum.accumulate(end_rank[::-1], axis=0)[::-1]
    precision = np.take_along_axis(hits, end_rank, axis=0) / (end_rank + 1)
    positives = hits[-1]
    return (precision * ranked_targets).sum(axis=0) / (positives + AP_EPS)


@dataclass(frozen=True)
class APResult:
    """mAP as the official code reports it, plus what is needed to read it right."""

    ap: np.ndarray  #: per class, 0 for classes without positives
    positives: np.ndarray  #: positive images per class

    @property
    def map(self) -> float:
        """Mean over all classes (official)."""
        return float(self.ap.mean()) if self.ap.size else 0.0

    @property
    def map_with_positives(self) -> float:
        """Mean over the classes that have at least one positive image."""
        has = self.positives > 0
        return float(self.ap[has].mean()) if has.any() else 0.0


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> APResult:
    scores, targets = _as_2d(scores, targets)
    return APResult(ap=average_precision(scores, targets), positives=targets.sum(axis=0))


@dataclass(frozen=True)
class PRResult:
    """Per-class counts at fixed thresholds and the class- and overall-averaged scores."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @property
    def precision(self) -> np.ndarray:
        return self.tp / (self.tp + self.fp + PR_EPS)

    @property
    def recall(self) -> np.ndarray:
        return self.tp / (self.tp + self.fn + PR_EPS)

    @property
    def cp(self) -> float:
        return float(self.precision.mean()) if self.tp.size else 0.0

    @property
    def cr(self) -> float:
        return float(self.recall.mean()) if self.tp.size else 0.0

    @property
    def cf1(self) -> float:
        return _f1(self.cp, self.cr)

    @property
    def op(self) -> float:
        return _ratio(self.tp.sum(), self.tp.sum() + self.fp.sum())

    @property
    def or_(self) -> float:
        return _ratio(self.tp.sum(), self.tp.sum() + self.fn.sum())

    @property
    def of1(self) -> float:
        return _f1(self.op, self.or_)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def _f1(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


def predict(scores: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """0/1 predictions as the official benchmark makes them: `score >= threshold` per class."""
    scores = np.asarray(scores)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.ndim and thresholds.shape[-1] != scores.shape[-1]:
        raise ValueError(f"{thresholds.shape[-1]} thresholds for {scores.shape[-1]} classes")
    return scores >= thresholds


def precision_recall(predictions: np.ndarray, targets: np.ndarray) -> PRResult:
    """Counts of 0/1 `predictions` [N, C] against `targets` [N, C]."""
    predictions, targets = _as_2d(np.asarray(predictions, dtype=bool), targets)
    predictions = predictions.astype(bool)
    return PRResult(
        tp=(predictions & targets).sum(axis=0).astype(np.int64),
        fp=(predictions & ~targets).sum(axis=0).astype(np.int64),
        fn=(~predictions & targets).sum(axis=0).astype(np.int64),
    )


@dataclass(frozen=True)
class TagMetrics:
    """Everything `recognize eval tags` reports for one score matrix."""

    ap: APResult
    pr: PRResult
    thresholds: np.ndarray

    def summary(self) -> dict[str, float]:
        """The headline numbers, as fractions (not percent)."""
        return {
            "mAP": self.ap.map,
            "mAP_classes_with_positives": self.ap.map_with_positives,
            "CP": self.pr.cp,
            "CR": self.pr.cr,
            "CF1": self.pr.cf1,
            "OP": self.pr.op,
            "OR": self.pr.or_,
            "OF1": self.pr.of1,
        }


def tag_metrics(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | float) -> TagMetrics:
    """mAP from the scores, and CP/CR/CF1/OP/OR/OF1 at `thresholds` (one per class, or one for all)."""
    scores, targets = _as_2d(scores, targets)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (scores.shape[1],)).copy()
    return TagMetrics(
        ap=mean_average_precision(scores, targets),
        pr=precision_recall(predict(scores, thresholds), targets),
        thresholds=thresholds,
    )
