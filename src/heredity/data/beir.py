"""A user's own retrieval corpus in the BEIR layout, read into an ``IRCorpus``.

The folder holds ``corpus.jsonl`` (one object per line: ``_id``, ``text``, optional ``title``),
``queries.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv`` (a ``query-id<TAB>corpus-id<TAB>score``
header, then one row per judged pair; a score above 0 means relevant). ``read_beir`` reads all three in full
and checks them before anything is computed: every problem is one ``HeredityError`` naming the file, the line
and the fix (a missing file, bytes that are not UTF-8, a line that is not a JSON object, a missing, empty or
repeated id, a wrong header, a malformed row or score, an id the other files do not hold, no relevant pair).
As sentence-transformers and MTEB do, a document's text is its title and text joined by a space; only
queries with at least one relevant document are kept; every document is kept.
"""

from __future__ import annotations

import re
from pathlib import Path

from heredity.data.io import decode_text, jsonl_rows, read_source
from heredity.data.retrieval import IRCorpus
from heredity.errors import HeredityError

LAYOUT = "a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
QRELS_HEADER = ("query-id", "corpus-id", "score")
SCORE = re.compile(r"[+-]?\d+")


def _id(row: dict, path: Path, line: int, example: str) -> str:
    v = row.get("_id")
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str) or not v.strip():
        got = "missing" if v is None else ("empty" if isinstance(v, str) else f"{type(v).__name__}, not text")
        raise HeredityError(f"{path}:{line}: '_id' is {got}; give every line an id, like {example}")
    return v


def _text(row: dict, key: str, path: Path, line: int, example: str, empty_ok: bool = False) -> str:
    v = row.get(key)
    if v is None and key == "title":
        return ""
    if not isinstance(v, str):
        got = "missing" if v is None else f"{type(v).__name__}, not text"
        raise HeredityError(f"{path}:{line}: {key!r} is {got}; write it as a JSON string, like {example}")
    if not empty_ok and not v.strip():
        raise HeredityError(f"{path}:{line}: {key!r} is empty; give it some text, like {example}")
    return v


def _records(folder: Path, name: str, what: str, example: str, fields: tuple[str, ...]) -> dict[str, dict]:
    """id -> {field: text} for every non-blank line of ``folder/name``; a repeated id names both lines."""
    src = read_source(folder / name, what, f"{LAYOUT}, one JSON object per line like {example}")
    out: dict[str, dict] = {}
    first: dict[str, int] = {}
    for line, row in jsonl_rows(src, what):
        i = _id(row, src.path, line, example)
        if i in first:
            raise HeredityError(
                f"{src.path}:{line}: _id {i!r} is also on line {first[i]}; give every line its own _id"
            )
        first[i] = line
        if "title" in fields:
            title = _text(row, "title", src.path, line, example, empty_ok=True).strip()
            text = _text(row, "text", src.path, line, example, empty_ok=bool(title))
            out[i] = f"{title} {text}" if title and text.strip() else (title or text)
        else:
            out[i] = _text(row, "text", src.path, line, example)
    if not out:
        raise HeredityError(f"{src.path} has no rows; write one JSON object per line like {example}")
    return out


def _qrels(folder: Path, split: str, corpus: dict[str, str], queries: dict[str, str]) -> dict[str, set[str]]:
    """query id -> its relevant document ids (score > 0), every row checked against the corpus and queries."""
    path = folder / "qrels" / f"{split}.tsv"
    have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
    found = f" (this folder has qrels for: {', '.join(have)})" if have else ""
    src = read_source(path, "qrels file", f"{LAYOUT}; pass the split whose qrels/<split>.tsv exists{found}")
    text = decode_text(src, "qrels file")
    header = "query-id<TAB>corpus-id<TAB>score"
    qrels: dict[str, set[str]] = {}
    seen_header = False
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        fields = [f.strip() for f in raw.rstrip("\r").split("\t")]
        if not seen_header:
            seen_header = True
            if tuple(f.lower() for f in fields) == QRELS_HEADER:
                continue
            looks_row = len(fields) == 3 and SCORE.fullmatch(fields[2])
            got = "missing (the first line is a row)" if looks_row else f"{raw.strip()!r}"
            raise HeredityError(f"{src.path}:{line}: header is {got}; the first line must be {header}")
        if len(fields) != 3:
            raise HeredityError(
                f"{src.path}:{line}: {len(fields)} tab-separated field(s), not 3; write each row as "
                f"query-id<TAB>corpus-id<TAB>score (tabs, not spaces)"
            )
        q, d, score = fields
        if not SCORE.fullmatch(score):
            raise HeredityError(
                f"{src.path}:{line}: score {score!r} is not an integer; write a whole number (0: not "
                "relevant, 1 or more: relevant)"
            )
        if q not in queries:
            raise HeredityError(
                f"{src.path}:{line}: query-id {q!r} is not in queries.jsonl; add the query or drop the row"
            )
        if d not in corpus:
            raise HeredityError(
                f"{src.path}:{line}: corpus-id {d!r} is not in corpus.jsonl; add the document or drop the row"
            )
        if int(score) > 0:
            qrels.setdefault(q, set()).add(d)
    if not seen_header:
        raise HeredityError(f"{src.path} is empty; its first line must be {header}, then one row per pair")
    if not qrels:
        raise HeredityError(
            f"{src.path}: no row has a score above 0, so no query has a relevant document; mark the "
            "relevant pairs with score 1 or more"
        )
    return qrels


def read_beir(path: str | Path, split: str = "test", instruction: str = "") -> IRCorpus:
    """The BEIR folder ``path`` as an ``IRCorpus`` named after the folder: all its documents, the queries
    with at least one relevant document in ``qrels/<split>.tsv``, and ``instruction`` as the task
    instruction. Every file is checked in full first; a problem is one ``HeredityError`` naming file and
    line."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise HeredityError(f"BEIR folder {folder} does not exist; {LAYOUT}")
    if not folder.is_dir():
        raise HeredityError(f"BEIR folder {folder} is not a folder; {LAYOUT}")
    doc = '{"_id": "d1", "title": "...", "text": "..."}'
    corpus = _records(folder, "corpus.jsonl", "corpus file", doc, ("title", "text"))
    queries = _records(folder, "queries.jsonl", "queries file", '{"_id": "q1", "text": "..."}', ("text",))
    qrels = _qrels(folder, split, corpus, queries)
    kept = {q: t for q, t in queries.items() if q in qrels}
    return IRCorpus(folder.resolve().name, corpus, kept, qrels, {}, instruction, {})
