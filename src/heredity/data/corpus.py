"""Pretraining corpora: CPython's own documentation by default, or the user's text/JSONL/parquet files.

A corpus is a dataset artifact with one row per document (``text``) and a ``split`` column (``train`` or
``val``): whole documents are held out, so validation text is never seen in training.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from heredity.errors import HeredityError
from heredity.store import Store, read_table
from heredity.store.ops import rows_op

rows_op("make-corpus")  # rows made here, stored by data.io.put_rows

TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".html", ".tex"}


def pydoc_documents() -> list[str]:
    """The topic texts of ``pydoc_data.topics`` (~0.47 MB, ships with every CPython), in a fixed order."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def read_documents(paths: list[str]) -> list[str]:
    """Documents from files: a text file is one document; JSONL and parquet give their ``text`` column."""
    docs: list[str] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.is_file():
            raise HeredityError(f"corpus file {p} does not exist; give text, JSONL or parquet files")
        if p.suffix in (".jsonl", ".parquet"):
            table = read_table(p)
            if "text" not in table.column_names:
                raise HeredityError(
                    f"corpus file {p} has no 'text' column (columns: {', '.join(table.column_names)})"
                )
            docs += [t for t in table.column("text").to_pylist() if t]
        else:
            try:
                docs.append(p.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                raise HeredityError(
                    f"corpus file {p} is not UTF-8 text ({e.reason}); convert it or give parquet"
                ) from None
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise HeredityError("the corpus files hold no text")
    return docs


def split_documents(docs: list[str], val_fraction: float, seed: int) -> list[dict]:
    """Rows {text, split}: documents in a seeded order are held out until ``val_fraction`` of the characters.

    One document alone is cut at a paragraph boundary so that both splits are non-empty."""
    if len(docs) == 1:
        paras = docs[0].split("\n\n")
        cut = max(1, int(len(paras) * (1 - val_fraction)))
        if cut >= len(paras):
            raise HeredityError(
                "the corpus is one paragraph; give more text so a validation split can be held out"
            )
        docs = ["\n\n".join(paras[:cut]), "\n\n".join(paras[cut:])]
        order = [1, 0]
    else:
        order = list(range(len(docs)))
        random.Random(seed).shuffle(order)
    total = sum(len(d) for d in docs)
    split = ["train"] * len(docs)
    held = 0
    for i in order:
        if held >= val_fraction * total or sum(s == "train" for s in split) == 1:
            break
        split[i], held = "val", held + len(docs[i])
    return [{"text": d, "split": s} for d, s in zip(docs, split, strict=True)]


def make_corpus(
    store: Store, files: list[str] | None = None, val_fraction: float = 0.1, seed: int = 0
) -> str:
    """The corpus as a dataset artifact (memoized on the documents' content)."""
    from heredity.data.io import put_rows

    docs = read_documents(files) if files else pydoc_documents()
    rows = split_documents(docs, val_fraction, seed)
    digest = hashlib.sha256(json.dumps(docs).encode()).hexdigest()
    source = "files" if files else "pydoc_data.topics"
    return put_rows(
        store,
        rows,
        "corpus",
        op="make-corpus",
        config={
            "source": source,
            "files": [str(Path(f).resolve()) for f in files or []],
            "val_fraction": val_fraction,
            "seed": seed,
            "documents_sha256": digest,
        },
    )
