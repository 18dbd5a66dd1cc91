"""Outliers: per tag, K-Means++ (scikit-learn) over the crops' embeddings, dropping the `drop_fraction`
farthest from their cluster centres (RAM paper: 10% by default)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

# -- outliers --------------------------------------------------------------------------------


@dataclass
class TagOutliers:
    """Clustering of one tag's crops: each crop's distance and the indices dropped (farthest first)."""

    tag: str
    distances: np.ndarray
    labels: np.ndarray
    clusters: int
    dropped: list[int] = field(default_factory=list)

    @property
    def kept(self) -> list[int]:
        gone = set(self.dropped)
        return [i for i in range(len(self.distances)) if i not in gone]


def cluster_distances(
    embeddings: np.ndarray,
    k: int = 3,
    seed: int = 0,
    n_init: int = 4,
    min_cluster_fraction: float = 0.1,
    normalize: bool = True,
) -> tuple[np.ndarray, np.ndarray, int]:
    """K-Means++ over `embeddings` [N, D]: (distance of each row to its centre, labels, k used).

    k shrinks to the number of distinct rows when there are fewer. A cluster holding less than
    `min_cluster_fraction` of the rows cannot hide its members: they are measured against the
    nearest large cluster's centre instead, so two planted outliers that K-Means gives their own
    clusters still stand out. Rows are L2-normalised first when `normalize` (cosine geometry).
    """
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=int), 0
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    distinct = np.unique(x, axis=0).shape[0]
    k_used = max(1, min(int(k), distinct))
    if k_used == 1:
        centres = x.mean(axis=0, keepdims=True)
        labels = np.zeros(n, dtype=int)
    else:
        km = KMeans(n_clusters=k_used, init="k-means++", n_init=n_init, random_state=seed).fit(x)
        centres, labels = km.cluster_centers_, km.labels_.astype(int)
    all_dist = np.linalg.norm(x[:, None, :] - centres[None, :, :], axis=2)  # [N, k]
    sizes = np.bincount(labels, minlength=k_used)
    large = sizes >= max(1, math.ceil(min_cluster_fraction * n))
    if not large.any():
        large[:] = True
    own = all_dist[np.arange(n), labels]
    nearest_large = np.where(large[None, :], all_dist, np.inf).min(axis=1)
    distances = np.where(large[labels], own, nearest_large)
    return distances, labels, k_used


def find_outliers(
    embeddings_by_tag: Mapping[str, np.ndarray],
    k: int = 3,
    drop_fraction: float = 0.1,
    seed: int = 0,
    n_init: int = 4,
    min_cluster_fraction: float = 0.1,
    normalize: bool = True,
) -> dict[str, TagOutliers]:
    """Per tag, the `floor(drop_fraction * N)` crops farthest from their cluster centres.

    Deterministic for a given `seed` (ties broken by crop index). Tags with too few crops for
    the fraction to reach one crop lose nothing.
    """
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    results: dict[str, TagOutliers] = {}
    for tag in sorted(embeddings_by_tag):
        emb = np.asarray(embeddings_by_tag[tag])
        distances, labels, used = cluster_distances(emb, k, seed, n_init, min_cluster_fraction, normalize)
        n = len(distances)
        count = int(math.floor(drop_fraction * n + 1e-9))
        order = sorted(range(n), key=lambda i: (-distances[i], i))
        results[tag] = TagOutliers(tag=tag, distances=distances, labels=labels, clusters=used,
                                   dropped=sorted(order[:count]))
    return results


