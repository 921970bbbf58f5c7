"""Clustering conversations: k-means over sentence embeddings, keywords, a hierarchy of parents, a 2-D map.

Everything here works on arrays and labels (scikit-learn); which text is embedded, and what may be shown, is
decided by the pipeline and ``privacy``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def choose_k(n: int, target_size: int = 40, min_conversations: int = 10) -> int:
    """k from the data size: about ``target_size`` conversations per cluster, never so many clusters that the
    average one falls under the privacy minimum, at least 2 (1 for fewer than 2 conversations)."""
    if n < 2:
        return 1
    return int(max(2, min(round(n / target_size), n // max(1, min_conversations))))


def kmeans(emb: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(labels, unit-length centroids) of k-means on unit-length embeddings (spherical-ish: cosine
    geometry)."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(emb)))
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(emb)
    cent = km.cluster_centers_
    cent = cent / np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    return km.labels_.astype(int), cent.astype(np.float32)


def keywords(texts_by_cluster: dict[int, list[str]], top: int = 5) -> dict[int, list[str]]:
    """Distinctive words per cluster: class-based TF-IDF (each cluster's texts as one document)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    ids = sorted(texts_by_cluster)
    if not ids:
        return {}
    vec = TfidfVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b", sublinear_tf=True)
    try:
        m = vec.fit_transform([" ".join(texts_by_cluster[i]) for i in ids])
    except ValueError:  # no words at all
        return {i: [] for i in ids}
    vocab = np.array(vec.get_feature_names_out())
    out = {}
    for row, i in enumerate(ids):
        scores = m[row].toarray()[0]
        best = scores.argsort()[::-1][:top]
        out[i] = [str(vocab[j]) for j in best if scores[j] > 0]
    return out


def parents(
    centroids: np.ndarray, sizes: Sequence[int], branching: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Group clusters into about ``len/branching`` parents (k-means on the centroids, weighted by size):
    (parent label per cluster, parent centroids)."""
    from sklearn.cluster import KMeans

    n = len(centroids)
    k = max(1, math.ceil(n / branching))
    if k >= n:
        return np.arange(n), centroids
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(
        centroids, sample_weight=np.asarray(sizes, float)
    )
    cent = km.cluster_centers_ / np.maximum(np.linalg.norm(km.cluster_centers_, axis=1, keepdims=True), 1e-12)
    return km.labels_.astype(int), cent.astype(np.float32)


def project_2d(points: np.ndarray) -> np.ndarray:
    """A 2-D map of cluster centroids (PCA; fewer than 3 points are laid on a line)."""
    if len(points) < 3:
        return np.array([[float(i), 0.0] for i in range(len(points))])
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=0).fit_transform(points)


def adjusted_rand(true: Sequence, pred: Sequence) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(list(true), list(pred)))
