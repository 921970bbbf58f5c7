"""data-quality's scored pool: every row gets its length, its IFD under the scorer, and its verifiable grades;
a rerun computes nothing."""

from __future__ import annotations

import pytest
from conftest import stored_tiny

from heredity.data import put_rows
from heredity.data.constraints import constraint_rows
from heredity.data.pool import score_pool
from heredity.engine.logprobs import ifd_scores
from heredity.models import load
from heredity.store import Store, read_table


def test_the_pool_is_scored_once_with_every_signal(tmp_path, monkeypatch):
    store = Store(tmp_path)
    scorer = stored_tiny(store, "scorer")
    con = constraint_rows(2, "train", seed=0)
    rows = [
        {"prompt": "Write vobi in capital letters.", "completion": "VOBI", "reference": "VOBI"},
        {"prompt": "What number comes after 7?", "completion": "9", "reference": "8"},
        {"prompt": con[0]["prompt"], "completion": "a short answer, all in lowercase.", "reference": None},
    ]
    did = put_rows(store, rows, "pool")
    scored = read_table(store.path(score_pool(store, did, scorer))).to_pylist()
    assert [r["length"] for r in scored] == [4, 1, 33]
    assert [r["correct"] for r in scored] == [True, False, None]
    assert [r["verified"] for r in scored] == [True, False, None]  # correct where graded, else unknown
    assert [r["strict"] for r in scored] == [None, None, None]  # no constraints given on these rows
    model, tok = load(scorer, store)
    want = ifd_scores(model, tok, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    assert [r["ifd"] for r in scored] == pytest.approx(want)

    # constraints: the rows of data.constraints, graded IFEval's way
    crow = [{"prompt": c["prompt"], "completion": "fine.", "constraints": c["constraints"]} for c in con]
    graded = read_table(store.path(score_pool(store, put_rows(store, crow, "pool-c"), scorer))).to_pylist()
    assert all(isinstance(r["strict"], bool) and r["loose"] >= r["strict"] for r in graded)

    compute = Store._compute

    def computed(self, op, *a, **k):
        raise AssertionError(f"the rerun computed step {op}")

    monkeypatch.setattr(Store, "_compute", computed)
    assert read_table(store.path(score_pool(Store(tmp_path), did, scorer))).to_pylist() == scored
    monkeypatch.setattr(Store, "_compute", compute)
