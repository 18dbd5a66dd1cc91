"""Tag metrics: known values, scikit-learn's AP, and the official definition on tie-free scores."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from recognize.eval import metrics
from recognize.eval.metrics import (
    average_precision,
    mean_average_precision,
    precision_recall,
    predict,
    tag_metrics,
)


def official_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """The official definition written out: mean precision at each positive's rank (scores without ties)."""
    ranked = targets[np.argsort(-scores)]
    hits, total = 0, 0.0
    for rank, positive in enumerate(ranked, 1):
        if positive:
            hits += 1
            total += hits / rank
    return total / (ranked.sum() + 1e-8)


def test_ap_known_values():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    # positives at ranks 1, 3 and 5: (1/1 + 2/3 + 3/5) / 3
    assert average_precision(scores, np.array([1, 0, 1, 0, 1]))[0] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert average_precision(scores, np.array([1, 1, 0, 0, 0]))[0] == pytest.approx(1.0)
    assert average_precision(scores, np.array([0, 0, 0, 0, 1]))[0] == pytest.approx(0.2)


def test_ap_tied_scores_are_scored_together():
    # one positive and one negative share the top score: precision 1/2 at that group
    scores = np.array([0.9, 0.9, 0.1])
    assert average_precision(scores, np.array([1, 0, 0]))[0] == pytest.approx(0.5)
    assert average_precision(scores, np.array([0, 1, 0]))[0] == pytest.approx(0.5)  # order does not matter


def test_ap_matches_sklearn_with_and_without_ties():
    rng = np.random.default_rng(1)
    for decimals in (None, 1, 2):
        scores = rng.random((300, 25)).astype(np.float32)
        if decimals is not None:
            scores = scores.round(decimals)  # many ties
        targets = rng.random((300, 25)) < rng.uniform(0.02, 0.5, size=25)
        targets[0] = True  # every class has a positive (sklearn's AP is undefined otherwise)
        expected = [average_precision_score(targets[:, k], scores[:, k]) for k in range(25)]
        np.testing.assert_allclose(average_precision(scores, targets), expected, rtol=1e-7, atol=1e-9)


def test_ap_matches_the_official_definition_without_ties():
    rng = np.random.default_rng(2)
    scores = rng.permutation(1000).reshape(200, 5).astype(np.float64) / 1000.0  # all distinct
    targets = rng.random((200, 5)) < 0.2
    expected = [official_ap(scores[:, k], targets[:, k]) for k in range(5)]
    np.testing.assert_allclose(average_precision(scores, targets), expected, rtol=1e-12)


def test_classes_without_positives_count_as_zero_in_map():
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.5, 0.4]])
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    result = mean_average_precision(scores, targets)
    np.testing.assert_allclose(result.ap, [1.0, 0.0], atol=1e-8)
    assert result.map == pytest.approx(0.5)
    assert result.map_with_positives == pytest.approx(1.0)
    assert list(result.positives) == [2, 0]


def test_chunked_computation_equals_one_block(monkeypatch):
    rng = np.random.default_rng(3)
    scores = rng.random((50, 40)).round(2)
    targets = rng.random((50, 40)) < 0.3
    whole = average_precision(scores, targets)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 120)  # 2 columns at a time
    np.testing.assert_array_equal(average_precision(scores, targets), whole)


def test_precision_recall_and_f1_known_values():
    targets = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 0], [0, 0, 0]], dtype=bool)
    preds = np.array([[1, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=bool)
    pr = precision_recall(preds, targets)
    assert list(pr.tp) == [2, 1, 0] and list(pr.fp) == [1, 1, 1] and list(pr.fn) == [0, 1, 1]
    p = np.array([2 / 3, 1 / 2, 0.0])
    r = np.array([1.0, 1 / 2, 0.0])
    assert pr.cp == pytest.approx(p.mean()) and pr.cr == pytest.approx(r.mean())
    assert pr.cf1 == pytest.approx(2 * p.mean() * r.mean() / (p.mean() + r.mean()))
    assert pr.op == pytest.approx(3 / 6) and pr.or_ == pytest.approx(3 / 5)
    assert pr.of1 == pytest.approx(2 * 0.5 * 0.6 / 1.1)


def test_nothing_predicted_gives_zeros_not_nan():
    pr = precision_recall(np.zeros((3, 2), bool), np.eye(3, 2, dtype=bool))
    assert (pr.cp, pr.cr, pr.cf1, pr.op, pr.or_, pr.of1) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_predict_uses_greater_or_equal_per_class():
    scores = np.array([[0.5, 0.5, 0.49]], dtype=np.float32)
    thresholds = np.array([0.5, 0.6, 0.49], dtype=np.float32)
    assert predict(scores, thresholds).tolist() == [[True, False, True]]
    with pytest.raises(ValueError, match="2 thresholds for 3 classes"):
        predict(scores, [0.5, 0.5])


def test_tag_metrics_combines_ap_and_thresholded_counts():
    scores = np.array([[0.9, 0.1], [0.6, 0.7], [0.2, 0.8]])
    targets = np.array([[1, 0], [0, 1], [0, 1]])
    result = tag_metrics(scores, targets, [0.5, 0.75])
    summary = result.summary()
    assert summary["mAP"] == pytest.approx(1.0)
    # class 0 predicted on images 0, 1 (one false positive); class 1 only on image 2 (one miss)
    assert summary["CP"] == pytest.approx((0.5 + 1.0) / 2) and summary["CR"] == pytest.approx((1.0 + 0.5) / 2)
    assert summary["OP"] == pytest.approx(2 / 3) and summary["OR"] == pytest.approx(2 / 3)
    assert list(result.thresholds) == [0.5, 0.75]
    assert tag_metrics(scores, targets, 0.5).thresholds.tolist() == [0.5, 0.5]


def test_bad_shapes_and_values_are_refused():
    with pytest.raises(ValueError, match="must both be"):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([0.1, np.nan]), np.array([1, 0]))
