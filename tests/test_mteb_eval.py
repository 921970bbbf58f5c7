"""MTEB's own retrieval pipeline on a local corpus: the task loads with no network, MTEB's nDCG@10, MRR@10 and
recall@10 equal the means of heredity's per-query scores with the prefix off and on (and the prefix changes
them), and a rerun of the step computes nothing."""

import json
import socket

import pytest

from heredity.data.io import put_rows
from heredity.engine.encoder import PREFIX, retrieval_scores
from heredity.engine.mteb_eval import local_task, mteb_model, mteb_scores
from heredity.engine.retrieval import BUNDLED, IRCorpus
from heredity.store import Store, read_table

INSTRUCTION = "Given a question, retrieve passages that answer it"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open an internet connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    connect = socket.socket.connect

    def refuse(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access to {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)


def corpus() -> IRCorpus:
    """12 documents, 6 queries, four with two relevant documents; the bundled MiniLM ranks some of them
    imperfectly (q3 and q4 put a wrong document first, q5's wrong label ranks below 10th), and the prefix
    changes q6's ranking."""
    docs = {
        "d01": "The cheetah is the fastest land animal, reaching 100 km/h in short sprints.",
        "d02": "Lions live in prides on the African savanna and hunt mostly at night.",
        "d03": "Peregrine falcons dive at more than 300 km/h, the fastest of all birds.",
        "d04": "Espresso is brewed by forcing hot water through finely ground coffee.",
        "d05": "Green tea is made from the unoxidized leaves of Camellia sinensis.",
        "d06": "Cold brew steeps coarse grounds in cold water for twelve hours.",
        "d07": "Python lists are mutable sequences that can hold items of any type.",
        "d08": "A tuple is an immutable sequence, often used for fixed records.",
        "d09": "Rust's borrow checker prevents data races at compile time.",
        "d10": "The Eiffel Tower in Paris was completed in 1889 for the World's Fair.",
        "d11": "The Colosseum in Rome could seat about fifty thousand spectators.",
        "d12": "Mount Everest is the highest mountain above sea level, at 8,849 metres.",
    }
    queries = {
        "q1": "which animals are the fastest",
        "q2": "ways to make coffee",
        "q3": "an immutable sequence type in python",
        "q4": "where did gladiators fight",
        "q5": "a hot drink made from leaves",
        "q6": "a famous landmark built for an exhibition",
    }
    qrels = {
        "q1": {"d01", "d03"},
        "q2": {"d04", "d06"},
        "q3": {"d08"},
        "q4": {"d11"},
        "q5": {"d05", "d12"},  # d12 (Everest for a drink) is a deliberately wrong label
        "q6": {"d10", "d11"},
    }
    return IRCorpus("toy", docs, queries, qrels, instruction=INSTRUCTION)


def test_the_local_task_loads_from_memory_in_mtebs_format():
    from datasets import Dataset
    from mteb.abstasks import AbsTaskRetrieval

    c = corpus()
    c.queries["q7"] = "a query nobody judged"
    task = local_task(c)
    assert isinstance(task, AbsTaskRetrieval) and not task.data_loaded
    md = task.metadata
    assert (md.name, md.type, md.main_score, md.eval_splits) == (
        "heredity-toy",
        "Retrieval",
        "ndcg_at_10",
        ["test"],
    )
    assert md.eval_langs == ["eng-Latn"] and md.prompt == {"query": INSTRUCTION}
    task.load_data()
    assert task.data_loaded
    split = task.dataset["default"]["test"]
    assert isinstance(split["corpus"], Dataset) and isinstance(split["queries"], Dataset)
    assert dict(zip(split["corpus"]["id"], split["corpus"]["text"], strict=True)) == c.corpus
    assert split["queries"]["id"] == [f"q{i}" for i in range(1, 7)]  # the unjudged query is left out
    assert split["relevant_docs"]["q1"] == {"d01": 1, "d03": 1} and split["top_ranked"] is None


def test_mtebs_scores_are_the_means_of_ours_and_a_rerun_computes_nothing(tmp_path, monkeypatch):
    store = Store(tmp_path)
    cid = put_rows(store, corpus().rows(), "ir-toy")
    got = {}
    for prefix in (False, True):
        rid, _ = retrieval_scores(store, BUNDLED, cid, "toy", INSTRUCTION, prefix)
        rows = read_table(store.path(rid)).to_pylist()
        ours = {m: sum(r[m] for r in rows) / len(rows) for m in ("ndcg@10", "mrr@10", "recall@10")}
        got[prefix] = mteb_scores(store, BUNDLED, cid, "toy", INSTRUCTION, prefix)
        assert len(rows) == 6 and ours["ndcg@10"] < 0.9 and ours["mrr@10"] < 0.9 and ours["recall@10"] < 1
        for m in ours:
            assert got[prefix][m.replace("@", "_at_")] == pytest.approx(ours[m], abs=1e-4), (prefix, m)
        assert got[prefix]["main_score"] == got[prefix]["ndcg_at_10"]
        assert {"map_at_10", "precision_at_10", "ndcg_at_100"} <= set(got[prefix])
    assert got[True]["ndcg_at_10"] != got[False]["ndcg_at_10"]  # the prefix reached the queries

    # each step's output is MTEB's result JSON
    results = [json.loads((store.path(a.id) / "result.json").read_text()) for a in store.list("report")]
    assert sorted(r["scores"]["test"][0]["ndcg_at_10"] for r in results) == pytest.approx(
        sorted(g["ndcg_at_10"] for g in got.values()), abs=1e-6
    )
    assert {r["task_name"] for r in results} == {"heredity-toy"}

    def computed(self, op, *a, **k):
        raise AssertionError(f"the rerun computed step {op}")

    monkeypatch.setattr(Store, "_compute", computed)
    for prefix in (False, True):
        assert mteb_scores(Store(tmp_path), BUNDLED, cid, "toy", INSTRUCTION, prefix) == got[prefix]


def test_the_prefix_is_mtebs_query_prompt_and_never_a_documents():
    from heredity.engine.encoder import load_encoder

    on = mteb_model(load_encoder(None, BUNDLED), INSTRUCTION, prefix=True).model_prompts
    assert on["query"] == PREFIX.format(task=INSTRUCTION) and not on.get("document")
    off = mteb_model(load_encoder(None, BUNDLED), INSTRUCTION, prefix=False).model_prompts
    assert not any((off or {}).values())
