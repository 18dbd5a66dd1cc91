"""Per-tag K-Means++ outliers, on planted data."""

from __future__ import annotations

import numpy as np
import pytest

from recognize.data_engine import cluster_distances, find_outliers

# -- outliers --------------------------------------------------------------------------------


def planted(n_inliers: int = 20, seed: int = 0, dim: int = 16) -> tuple[np.ndarray, list[int]]:
    """`n_inliers` embeddings near one direction plus two far away; returns them and the planted indices."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dim)
    inliers = centre + 0.05 * rng.normal(size=(n_inliers, dim))
    outliers = np.stack([-centre + 0.05 * rng.normal(size=dim), rng.normal(size=dim) * 3])
    embeddings = np.concatenate([inliers, outliers])
    order = rng.permutation(len(embeddings))  # planted ones somewhere in the middle
    where = [int(np.flatnonzero(order == i)[0]) for i in (n_inliers, n_inliers + 1)]
    return embeddings[order], sorted(where)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_planted_outliers_are_exactly_the_ones_dropped(k):
    embeddings, planted_at = planted()
    result = find_outliers({"dog": embeddings}, k=k, drop_fraction=0.1, seed=0)["dog"]
    assert len(embeddings) == 22
    assert result.dropped == planted_at  # floor(10% of 22) = 2, and they are the planted two
    assert sorted(result.kept + result.dropped) == list(range(22))
    far = min(result.distances[i] for i in planted_at)
    near = max(result.distances[i] for i in result.kept)
    assert far > 3 * near


def test_outliers_per_tag_and_deterministic():
    dogs, dog_planted = planted(seed=1)
    cats, cat_planted = planted(n_inliers=38, seed=2)
    first = find_outliers({"dog": dogs, "cat": cats}, k=3, seed=7)
    second = find_outliers({"cat": cats, "dog": dogs}, k=3, seed=7)
    assert first["dog"].dropped == dog_planted
    assert len(first["cat"].dropped) == 4  # floor(10% of 40): the two planted and the two farthest inliers
    assert set(cat_planted) <= set(first["cat"].dropped)
    for tag in ("dog", "cat"):
        np.testing.assert_array_equal(first[tag].distances, second[tag].distances)
        assert first[tag].dropped == second[tag].dropped


def test_fewer_crops_than_k_and_tiny_tags():
    result = find_outliers({"a": np.eye(3), "b": np.ones((1, 4)), "c": np.zeros((0, 4)),
                            "same": np.ones((6, 4))}, k=5, drop_fraction=0.2)
    assert result["a"].clusters == 3 and result["a"].dropped == []  # floor(0.6) = 0
    assert result["b"].clusters == 1 and result["b"].distances.tolist() == [0.0]
    assert result["c"].clusters == 0 and result["c"].dropped == []
    assert result["same"].clusters == 1  # six identical crops: one distinct point, no KMeans warning
    assert len(result["same"].dropped) == 1  # floor(1.2); all tie at 0, the first index goes
    assert result["same"].dropped == [0]


def test_small_clusters_are_measured_from_the_large_ones():
    embeddings, planted_at = planted()
    distances, labels, used = cluster_distances(embeddings, k=3, min_cluster_fraction=0.1)
    assert used == 3
    # K-Means gives the two far points clusters of their own; they still get large distances
    assert all(distances[i] > 1.0 for i in planted_at)
    naive, _, _ = cluster_distances(embeddings, k=3, min_cluster_fraction=0.0)
    assert all(naive[i] < 1e-9 for i in planted_at)


def test_drop_fraction_is_checked():
    with pytest.raises(ValueError):
        find_outliers({"a": np.eye(3)}, drop_fraction=1.0)


