"""read_beir: a valid BEIR folder reads to the exact corpus; every bad input is one HeredityError naming the
file and the line, before anything is computed."""

from __future__ import annotations

import json

import pytest

from heredity.data.beir import read_beir
from heredity.errors import HeredityError

CORPUS = [
    {"_id": "d1", "title": "Paris", "text": "Paris is the capital of France."},
    {"_id": "d2", "title": "", "text": "Berlin is the capital of Germany."},
    {"_id": "d3", "text": "Rome is the capital of Italy.", "metadata": {}},
]
QUERIES = [
    {"_id": "q1", "text": "capital of France?"},
    {"_id": "q2", "text": "capital of Germany?"},
    {"_id": "q3", "text": "capital of Italy?"},  # judged only with score 0: dropped
    {"_id": "q4", "text": "capital of Spain?"},  # no qrels at all: dropped
]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td1\t0\nq3\td3\t0\n"


def lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def make(tmp_path, corpus=None, queries=None, qrels=None, name="mine"):
    """A BEIR folder; each file's content given as text (or bytes), the valid one by default."""
    folder = tmp_path / name
    (folder / "qrels").mkdir(parents=True)
    for f, content in (
        ("corpus.jsonl", lines(CORPUS) if corpus is None else corpus),
        ("queries.jsonl", lines(QUERIES) if queries is None else queries),
        ("qrels/test.tsv", QRELS if qrels is None else qrels),
    ):
        data = content if isinstance(content, bytes) else content.encode()
        (folder / f).write_bytes(data)
    return folder


def fails(folder, match: str, **kw) -> str:
    with pytest.raises(HeredityError, match=match) as e:
        read_beir(folder, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_valid_folder_reads_exactly(tmp_path):
    folder = make(tmp_path, corpus="\n" + lines(CORPUS) + "\n\n")  # blank lines are skipped
    c = read_beir(folder, instruction="Find the capital")
    assert c.name == "mine"
    assert c.corpus == {
        "d1": "Paris Paris is the capital of France.",
        "d2": "Berlin is the capital of Germany.",
        "d3": "Rome is the capital of Italy.",
    }
    assert c.queries == {"q1": "capital of France?", "q2": "capital of Germany?"}
    assert c.qrels == {"q1": {"d1"}, "q2": {"d2"}}
    assert c.topics == {} and c.swap_target == {}
    assert c.instruction == "Find the capital"


def test_other_split_and_crlf(tmp_path):
    folder = make(tmp_path)
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\r\nq3\td3\t1\r\n")
    c = read_beir(folder, split="dev")
    assert c.queries == {"q3": "capital of Italy?"} and c.qrels == {"q3": {"d3"}}


def test_missing_folder(tmp_path):
    fails(tmp_path / "nope", r"nope does not exist; .*corpus\.jsonl, queries\.jsonl and qrels/<split>\.tsv")
    (tmp_path / "file").write_text("x")
    fails(tmp_path / "file", r"is not a folder")


@pytest.mark.parametrize("missing", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_missing_file(tmp_path, missing):
    folder = make(tmp_path)
    (folder / missing).unlink()
    fails(folder, rf"{missing} does not exist; a BEIR folder holds corpus\.jsonl, queries\.jsonl")


def test_missing_split_names_the_splits_present(tmp_path):
    fails(make(tmp_path), r"qrels/dev\.tsv does not exist; .*has qrels for: test", split="dev")


@pytest.mark.parametrize(
    ("which", "content", "match"),
    [
        (
            "corpus",
            lines(CORPUS).encode() + b'{"_id": "d9", "text": "caf\xe9"}\n',
            r"corpus\.jsonl:4: not UTF-8",
        ),
        ("queries", b"\xff\xfe" + lines(QUERIES).encode(), r"queries\.jsonl:1: not UTF-8"),
        ("qrels", QRELS.encode() + b"q1\td\xe93\t1\n", r"test\.tsv:6: not UTF-8"),
    ],
)
def test_not_utf8(tmp_path, which, content, match):
    fails(make(tmp_path, **{which: content}), match)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ('{"_id": "d9" "text": "x"}', r"corpus\.jsonl:4: not JSON \(Expecting ',' delimiter"),
        ('["d9", "x"]', r"corpus\.jsonl:4: a list where a JSON object belongs"),
        ('{"text": "x"}', r"corpus\.jsonl:4: '_id' is missing; .*\"_id\": \"d1\""),
        ('{"_id": " ", "text": "x"}', r"corpus\.jsonl:4: '_id' is empty"),
        ('{"_id": "d9"}', r"corpus\.jsonl:4: 'text' is missing"),
        ('{"_id": "d9", "text": ""}', r"corpus\.jsonl:4: 'text' is empty"),
        ('{"_id": "d9", "text": 5}', r"corpus\.jsonl:4: 'text' is int, not text"),
        ('{"_id": "d9", "title": ["a"], "text": "x"}', r"corpus\.jsonl:4: 'title' is list, not text"),
    ],
)
def test_bad_corpus_line(tmp_path, line, match):
    fails(make(tmp_path, corpus=lines(CORPUS) + line + "\n"), match)


def test_bad_query_line(tmp_path):
    fails(
        make(tmp_path, queries=lines(QUERIES) + '{"_id": "q9", "text": null}\n'), r"queries\.jsonl:5: 'text'"
    )


@pytest.mark.parametrize("which", ["corpus", "queries"])
def test_duplicate_id_names_both_lines(tmp_path, which):
    rows = CORPUS if which == "corpus" else QUERIES
    content = lines(rows) + "\n" + json.dumps({**rows[1], "text": "again"}) + "\n"
    fails(make(tmp_path, **{which: content}), rf"{which}\.jsonl:{len(rows) + 2}: _id '.2' is also on line 2")


@pytest.mark.parametrize(
    ("qrels", "match"),
    [
        ("", r"test\.tsv is empty; its first line must be query-id<TAB>corpus-id<TAB>score"),
        ("q1\td1\t1\n", r"test\.tsv:1: header is missing .*first line must be query-id<TAB>corpus-id"),
        ("qid\tdocid\tscore\nq1\td1\t1\n", r"test\.tsv:1: header is 'qid\\tdocid\\tscore'"),
        (QRELS + "q1 d3 1\n", r"test\.tsv:6: 1 tab-separated field\(s\), not 3"),
        (QRELS + "q1\td3\t0.5\n", r"test\.tsv:6: score '0\.5' is not an integer"),
        (QRELS + "q9\td3\t1\n", r"test\.tsv:6: query-id 'q9' is not in queries\.jsonl"),
        (QRELS + "q1\td9\t1\n", r"test\.tsv:6: corpus-id 'd9' is not in corpus\.jsonl"),
        ("query-id\tcorpus-id\tscore\nq1\td1\t0\n", r"test\.tsv: no row has a score above 0"),
    ],
)
def test_bad_qrels(tmp_path, qrels, match):
    fails(make(tmp_path, qrels=qrels), match)


def test_empty_corpus(tmp_path):
    fails(make(tmp_path, corpus="\n"), r"corpus\.jsonl has no rows")
