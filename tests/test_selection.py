"""Each selection rule of data-quality picks exactly what it says, and refuses to return fewer rows."""

from __future__ import annotations

import pytest

from heredity.data.selection import noisy, select
from heredity.errors import HeredityError

POOL = [
    {"id": 0, "completion": "a" * 5, "ifd": 0.9, "reward": 0.1, "verified": True},
    {"id": 1, "completion": "a" * 50, "ifd": 1.2, "reward": 2.0, "verified": False},
    {"id": 2, "completion": "a" * 20, "ifd": 0.5, "reward": 1.5, "verified": True},
    {"id": 3, "completion": "a" * 50, "ifd": float("nan"), "reward": None, "verified": True},
    {"id": 4, "completion": "a" * 1, "ifd": 0.95, "reward": -1.0, "verified": False},
    {"id": 5, "completion": "a" * 30, "ifd": 0.2, "reward": 0.7, "verified": True},
]


def ids(rows):
    return [r["id"] for r in rows]


def test_each_rule_picks_what_it_says():
    assert ids(select(POOL, "longest", 3)) == [1, 3, 5]  # 50, 50 (ties by pool order), 30
    assert ids(select(POOL, "ifd", 2)) == [0, 4]  # the highest IFD below 1: 0.95, 0.9 (1.2 and NaN never)
    assert ids(select(POOL, "reward", 2)) == [1, 2]  # 2.0, 1.5; the unscored row never
    assert set(ids(select(POOL, "verified", 4))) == {0, 2, 3, 5}
    r = select(POOL, "random", 3, seed=1)
    assert len(set(ids(r))) == 3 and r == select(POOL, "random", 3, seed=1)
    assert {tuple(ids(select(POOL, "random", 3, seed=s))) for s in range(20)} != {tuple(ids(r))}


def test_quality_vs_quantity_mixes_the_stated_share_of_wrong_rows():
    rows = noisy(POOL, 4, 0.5, seed=0)
    assert sorted(r["verified"] for r in rows) == [False, False, True, True]
    assert all(r["verified"] for r in noisy(POOL, 3, 0.0))


def test_a_rule_that_cannot_fill_n_says_so():
    with pytest.raises(
        HeredityError, match="ifd \\(IFD below 1\\): the pool holds 4 eligible rows and N is 5"
    ):
        select(POOL, "ifd", 5)
    with pytest.raises(HeredityError, match="verified"):
        select(POOL, "verified", 5)
    with pytest.raises(HeredityError, match="noisy \\(3 wrong rows\\)"):
        noisy(POOL, 4, 0.75)
    with pytest.raises(HeredityError, match="unknown selection rule 'best'"):
        select(POOL, "best", 1)
