"""The committed reports under docs/results keep the bar: no degenerate interval, and every p-value in prose
states its unit of replication and n beside it."""

import re
from pathlib import Path

import pytest

RESULTS = sorted((Path(__file__).resolve().parents[1] / "docs" / "results").glob("*.md"))
DEGENERATE = re.compile(r"\[([+\-−]?\d+(?:\.\d+)?(?:e-?\d+)?), \1\]")
P_VALUE = re.compile(r"\bp = \d")


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_no_zero_width_interval(path):
    bad = [line.strip()[:120] for line in path.read_text().splitlines() if DEGENERATE.search(line)]
    assert not bad, f"{path.name}: zero-width intervals (use rate_ci for rates; undetermined for n < 2): {bad[:3]}"


@pytest.mark.parametrize("path", RESULTS, ids=[p.name for p in RESULTS])
def test_every_p_value_names_its_unit(path):
    paragraphs = re.split(r"\n\s*\n", path.read_text())
    bad = [p.strip()[:160] for p in paragraphs if P_VALUE.search(p) and not re.search(r"\bunit\b", p)]
    assert not bad, f"{path.name}: p-values without their unit of replication and n: {bad[:2]}"


def test_the_checks_can_fail():
    assert DEGENERATE.search("0.00 [0.00, 0.00]") and DEGENERATE.search("1.00 [1.00, 1.00]")
    assert not DEGENERATE.search("0.00 [0.00, 0.06]") and DEGENERATE.search("+0.00 [+0.00, +0.00]")
    assert DEGENERATE.search("−0.010 [−0.010, −0.010]") and not DEGENERATE.search("+0.00 [-0.09, +0.09]")
    assert P_VALUE.search("Welch p = 3.2e-17") and not P_VALUE.search("p undetermined")
