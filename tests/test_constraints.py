"""data.constraints: every IFEval-style checker on passing answers and near misses, strict vs loose, the
counting rules, the constraint rows (held-out pairs of kinds never in train, disjoint subjects, seeded)."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pytest

from heredity.data.constraints import (
    CONFLICTS,
    END_PHRASES,
    FORBIDDEN,
    KEYWORDS,
    KINDS,
    SUBJECTS,
    TEMPLATES,
    Constraint,
    check,
    compatible_pairs,
    constraint_rows,
    count_sentences,
    count_words,
    held_out_pairs,
    ifeval_accuracy,
    kind_pair,
    loose_variants,
    pair_split,
    score_answer,
    split_sentences,
    subjects,
)
from heredity.errors import HeredityError


def words(k: int) -> str:
    return " ".join(["word"] * k)


# kind, params, answers that pass strictly, answers that fail strictly (near misses first)
CASES = [
    (
        "length_constraints:number_words",
        {"relation": "at least", "num_words": 100},
        [words(100), words(150), "don't " * 50],  # "don't" is 2 words: 100
        [words(99), "don't " * 49 + "do"],
    ),
    (
        "length_constraints:number_words",
        {"relation": "at most", "num_words": 100},
        [words(100), words(1)],
        [words(101), words(99) + " well-known"],
    ),
    (
        "length_constraints:number_words",
        {"relation": "less than", "num_words": 100},
        [words(99)],
        [words(100)],
    ),
    (
        "length_constraints:number_sentences",
        {"relation": "exactly", "num_sentences": 3},
        ["One. Two! Three?", "Dr. Who came. He saw 3.14 apples. Bye.", "Yes.\nNo.\nMaybe."],
        ["One. Two.", "One. Two. Three. Four.", "One. Two. Three... Four"],
    ),
    (
        "length_constraints:number_sentences",
        {"relation": "at least", "num_sentences": 2},
        ["One. Two.", "One! Two? Three."],
        ["Just one, e.g. this.", "* one\n* two\n* three"],
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 3},
        ["a\n***\nb\n***\nc", "*** a *** b *** c ***"],
        ["a\n***\nb", "a *** b *** c *** d", "a\n***\n\n***\nc"],
    ),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 3},
        ["Intro\n* one\n* two\n* three", "- one\n  * two\n- three\n\nDone."],
        [
            "* one\n* two\n* three\n* four",  # one item too many
            "* one\n* two",
            "* one\n* two\n**bold** line",  # emphasis is no bullet
            "* one\n* two\n---",  # a rule is no bullet
            "* one\n* two\n*emphasis* line",
            "1. one\n2. two\n3. three",
        ],
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        ["*one* and *two*", "*one* and **two**"],
        ["*one* only", "** ** and *one*", "* bullet\n* bullet"],
    ),
    (
        "keywords:existence",
        {"keywords": ["history", "memory"]},
        ["History and memory.", "HISTORY, memory's edge"],
        ["history only", "prehistory and memory", "histories and memories"],
    ),
    (
        "keywords:frequency",
        {"keyword": "story", "relation": "at least", "frequency": 2},
        ["A story, another Story."],
        ["A story about a storyteller.", "stories and a story"],
    ),
    (
        "keywords:frequency",
        {"keyword": "story", "relation": "less than", "frequency": 2},
        ["One story.", "No tales at all."],
        ["Story. STORY."],
    ),
    (
        "keywords:forbidden_words",
        {"forbidden_words": ["very", "good"]},
        ["Every day is goodness itself."],
        ["Very nice.", "It was good.", "so-very"],
    ),
    (
        "change_case:english_lowercase",
        {},
        ["all lowercase, with digits 123.", "ß and é are fine"],
        ["all lowercase but One", "ALL CAPS"],
    ),
    (
        "change_case:english_capital",
        {},
        ["ALL CAPITAL LETTERS, 123!"],
        ["ALL CAPITAL LETTERs", "123 456", "all lowercase"],
    ),
    (
        "detectable_format:json_format",
        {},
        ['{"a": 1}', '```json\n{"a": [1, 2]}\n```', "```\n[1, 2]\n```", '```JSON\n"text"\n```', "42"],
        ['Here it is: {"a": 1}', '{"a": 1,}', "{'a': 1}", '```json\n{"a": 1}\n``` done'],
    ),
    (
        "detectable_format:title",
        {},
        ["<<Poem of Joy>>\nThe poem.", "Text <<Bread, butter>> text"],
        ["<< >>\ntext", "<Poem>", "<<Poem\nof joy>>", "Poem of joy"],
    ),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        ["Text. Any other questions?  \n\t", "text. any other questions?"],
        ["Text. Any other questions? Bye.", "Text. Any other questions", "Any other questions?!"],
    ),
    (
        "startend:quotation",
        {},
        ['"Quoted answer."', '  "Quoted\nanswer."\n'],
        ['"Not closed', 'Not opened"', '"', "\u201cCurly quotes\u201d"],
    ),
    (
        "punctuation:no_comma",
        {},
        ["No commas here; none at all."],
        ["One, two.", "<<Bread, butter>>\nno comma after the title"],
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        ["Text.\nP.S. More.", "Text.\n  p.s. more", "Text.\nP. S. More."],
        ["Text.\nPS more", "Text. I add p.s. in a line.", "Text.\nP.P.S more"],
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.P.S"},
        ["Text.\nP.P.S More.", "Text.\np. p. s more"],
        ["Text.\nP.S. More."],
    ),
]


def test_every_kind_is_tested():
    assert {c[0] for c in CASES} == set(KINDS)
    assert len(KINDS) == 16


@pytest.mark.parametrize(
    ("kind", "params", "good", "bad"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_checker(kind, params, good, bad):
    c = Constraint(kind, params)
    for a in good:
        assert check(c, a), f"{kind} should pass: {a!r}"
        assert check(c, a, loose=True)  # a strict pass is a loose pass
    for a in bad:
        assert not check(c, a), f"{kind} should fail: {a!r}"


def test_count_words_is_ifevals_regex_count():
    assert count_words("") == 0
    assert count_words("don't stop") == 3
    assert count_words("well-known 3.14") == 4
    assert count_words("héllo wörld, snake_case!") == 3
    assert count_words("  \n*** ---  ") == 0


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("", []),
        ("No end punctuation", ["No end punctuation"]),
        ("Dr. Smith arrived. He sat down.", ["Dr. Smith arrived.", "He sat down."]),
        ("Pi is 3.14. Yes.", ["Pi is 3.14.", "Yes."]),
        ("Wait... what?! Really.", ["Wait...", "what?!", "Really."]),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("Fruit, e.g. apples, is good. Eat it.", ["Fruit, e.g. apples, is good.", "Eat it."]),
        ("J. R. R. Tolkien wrote books. Many.", ["J. R. R. Tolkien wrote books.", "Many."]),
        ("Text.\nP.S. thanks", ["Text.", "P.S. thanks"]),
        ("* one\n* two\n* three", ["* one\n* two\n* three"]),
        ("!!! Hello.", ["!!! Hello."]),
        ("I got an A. Then I left.", ["I got an A. Then I left."]),  # a lone letter reads as an initial
        ("Visit example.com today. Ok", ["Visit example.com today.", "Ok"]),
        ("a\n***\nb.", ["a\n***\nb."]),
    ],
)
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences
    assert count_sentences(text) == len(sentences)


def test_loose_variants_are_ifevals_eight():
    assert loose_variants("Sure:\n*body*\nBye") == [
        "Sure:\n*body*\nBye",
        "Sure:\nbody\nBye",
        "*body*\nBye",
        "Sure:\n*body*",
        "*body*",
        "body\nBye",
        "Sure:\nbody",
        "body",
    ]


@pytest.mark.parametrize(
    ("kind", "params", "answer"),
    [
        ("detectable_format:json_format", {}, 'Sure, here it is:\n```json\n{"a": 1}\n```'),
        ("change_case:english_lowercase", {}, "Sure! Here it is:\nall lowercase text"),
        ("change_case:english_capital", {}, "Here you go:\nALL CAPS\nHope this helps!"),
        (
            "startend:end_checker",
            {"end_phrase": "Any other questions?"},
            "Text. Any other questions?\n(note)",
        ),
        ("startend:quotation", {}, '*"Quoted in emphasis."*'),
        ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "- intro line\n* one\n* two"),
        ("keywords:forbidden_words", {"forbidden_words": ["sure"]}, "Sure!\nThe answer."),
        ("punctuation:no_comma", {}, "Sure, here it is:\nThe answer without them."),
    ],
)
def test_passes_only_loose(kind, params, answer):
    c = Constraint(kind, params)
    assert not check(c, answer)
    assert check(c, answer, loose=True)


def test_blank_answer_never_passes():
    c = Constraint("keywords:forbidden_words", {"forbidden_words": ["very"]})
    assert check(c, "fine")
    for a in ("", "  \n ", "\t"):
        assert not check(c, a) and not check(c, a, loose=True)
    lower = Constraint("change_case:english_lowercase")
    assert not check(lower, "") and not check(lower, "\n", loose=True)


def test_phrases_are_ifevals():
    assert Constraint("length_constraints:number_words", {"relation": "at most", "num_words": 50}).text() == (
        "Answer with at most 50 words."
    )
    assert Constraint(
        "length_constraints:number_sentences", {"relation": "exactly", "num_sentences": 1}
    ).text() == ("Your response should contain exactly 1 sentence.")
    assert Constraint("keywords:existence", {"keywords": ["history", "memory"]}).text() == (
        "Include keywords history, memory in the response."
    )
    assert Constraint("startend:end_checker", {"end_phrase": "Any other questions?"}).text() == (
        "Finish your response with this exact phrase Any other questions? No other words should follow "
        "this phrase."
    )
    assert (
        Constraint("startend:end_checker", {"end_phrase": "Goodbye"})
        .text()
        .startswith("Finish your response with this exact phrase Goodbye. No other")
    )
    assert Constraint("detectable_format:title").text() == (
        "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>."
    )
    bullets = Constraint("detectable_format:number_bullet_lists", {"num_bullets": 3}).text()
    assert bullets.startswith("Your answer must contain exactly 3 bullet points.")
    for kind, params, *_ in CASES:
        assert Constraint(kind, params).text().strip()


@pytest.mark.parametrize(
    ("kind", "params", "match"),
    [
        (
            "keywords:exists",
            {},
            r"unknown constraint kind 'keywords:exists'; use one of .*keywords:existence",
        ),
        ("length_constraints:number_words", {"num_words": 5}, r"parameter 'relation' is missing"),
        (["keywords:existence"], {}, r"unknown constraint kind \['keywords:existence'\]"),
        ("punctuation:no_comma", {"comma": 1}, r"unknown parameter 'comma'; its parameters are none"),
        (
            "length_constraints:number_words",
            {"relation": "more than", "num_words": 5},
            r"relation is str 'more than'; use one of less than, at most, at least, exactly",
        ),
        (
            "detectable_format:number_bullet_lists",
            {"num_bullets": 0},
            r"num_bullets is int 0; give a whole number",
        ),
        ("detectable_format:number_bullet_lists", {"num_bullets": True}, r"num_bullets is bool True"),
        ("detectable_format:number_bullet_lists", {"num_bullets": "3"}, r"num_bullets is str '3'"),
        ("keywords:existence", {"keywords": []}, r"keywords is list \[\]; give a non-empty list of words"),
        ("keywords:existence", {"keywords": "history"}, r"keywords is str 'history'"),
        ("keywords:existence", {"keywords": ["ok", " "]}, r"give a non-empty list of words"),
        ("startend:end_checker", {"end_phrase": " "}, r"end_phrase is str ' '; give some text"),
        ("punctuation:no_comma", ["x"], r"params is list \['x'\]; give an object"),
    ],
)
def test_bad_constraints(kind, params, match):
    with pytest.raises(HeredityError, match=match):
        Constraint(kind, params)


def test_serialization_round_trip_and_ifeval_kwargs():
    c = Constraint("keywords:frequency", {"keyword": "story", "relation": "at least", "frequency": 2})
    d = c.to_dict()
    assert d == {
        "kind": "keywords:frequency",
        "params": {"keyword": "story", "relation": "at least", "frequency": 2},
    }
    assert Constraint.from_dict(d) == c and hash(Constraint.from_dict(d)) == hash(c)
    assert Constraint.from_dict({"kind": "punctuation:no_comma"}) == Constraint("punctuation:no_comma")
    # IFEval's own kwargs name every parameter of every kind, null where unused
    kw = {"num_words": 300, "relation": "less than", "keywords": None, "end_phrase": None}
    assert check({"kind": "length_constraints:number_words", "params": kw}, words(299))
    with pytest.raises(HeredityError, match=r"a constraint is str 'x'; write it as"):
        Constraint.from_dict("x")


def test_score_answer_prompt_and_instruction_level():
    row = {
        "prompt": "p",
        "constraints": [
            {"kind": "change_case:english_lowercase", "params": {}},
            {"kind": "startend:end_checker", "params": {"end_phrase": "Any other questions?"}},
        ],
    }
    both = score_answer(row, "a short answer. any other questions?")
    assert both == {
        "strict": True,
        "loose": True,
        "per_constraint": [
            {"kind": "change_case:english_lowercase", "strict": True, "loose": True},
            {"kind": "startend:end_checker", "strict": True, "loose": True},
        ],
    }
    half = score_answer(row, "A short answer. Any other questions?")
    assert not half["strict"] and not half["loose"]
    assert [p["strict"] for p in half["per_constraint"]] == [False, True]
    only_loose = score_answer(row, "Sure! Here it is:\nan answer. any other questions?")
    assert not only_loose["strict"] and only_loose["loose"]
    with pytest.raises(HeredityError, match="no constraints"):
        score_answer({"constraints": []}, "x")

    acc = ifeval_accuracy([row, row, row], ["a. any other questions?", "A. Any other questions?", "Sure\nno"])
    assert acc["prompt_strict"] == pytest.approx(1 / 3) and acc["prompt_loose"] == pytest.approx(1 / 3)
    assert acc["instruction_strict"] == pytest.approx(3 / 6)  # 2 + 1 + 0 of 6
    assert acc["instruction_loose"] == pytest.approx(4 / 6)  # the third is lowercase once "Sure" is dropped
    assert acc["prompts"] == 3 and acc["instructions"] == 6
    assert acc["per_kind"]["startend:end_checker"] == {"n": 3, "strict": pytest.approx(2 / 3), "loose": 2 / 3}
    with pytest.raises(ValueError, match="3 rows but 2 answers"):
        ifeval_accuracy([row] * 3, ["a", "b"])


# ---- pairs and rows --------------------------------------------------------------------------------------


def test_pair_split_partitions_the_compatible_pairs():
    pairs = compatible_pairs()
    assert len(pairs) == len(set(pairs)) == 120 - len(CONFLICTS)
    assert all(a < b and frozenset((a, b)) not in CONFLICTS for a, b in pairs)
    assert frozenset({"change_case:english_lowercase", "change_case:english_capital"}) in CONFLICTS
    json_pairs = [p for p in pairs if "detectable_format:json_format" in p]
    assert sorted(json_pairs) == [
        ("detectable_format:json_format", "keywords:existence"),
        ("detectable_format:json_format", "keywords:forbidden_words"),
    ]
    for seed in (0, 1, 7):
        s = pair_split(seed)
        assert set(s["train"]) | set(s["held_out"]) == set(pairs)
        assert not set(s["train"]) & set(s["held_out"])
        assert len(s["held_out"]) == round(len(pairs) / 4)
        assert set(s["held_out"]) == held_out_pairs(seed)
        trained = {k for p in s["train"] for k in p}
        assert trained == set(KINDS)  # every kind has some partner in training
    assert pair_split(0) == pair_split(0) and held_out_pairs(0) != held_out_pairs(1)


@pytest.mark.parametrize("split_seed", [0, 3])
def test_held_out_pairs_never_in_train(split_seed):
    held = held_out_pairs(split_seed)
    train = constraint_rows(3000, "train", seed=1, split_seed=split_seed)
    train_pairs = {kind_pair(r) for r in train} - {None}
    assert train_pairs and not train_pairs & held
    assert train_pairs <= set(pair_split(split_seed)["train"])
    for part in ("val", "eval"):
        rows = constraint_rows(600, part, seed=1, split_seed=split_seed)
        pairs = [kind_pair(r) for r in rows if kind_pair(r)]
        assert pairs and set(pairs) <= held
        assert len(set(pairs)) == len(held)  # 600 rows reach every held-out pair
        singles = {r["constraints"][0]["kind"] for r in rows if len(r["constraints"]) == 1}
        assert singles == set(KINDS)  # single-constraint rows may use any kind


def subject_of(base: str) -> str:
    for t in TEMPLATES:
        m = re.fullmatch(re.escape(t).replace(r"\{\}", "(.+)"), base)
        if m:
            return m.group(1)
    raise AssertionError(f"no template makes {base!r}")


def test_subjects_disjoint_between_parts():
    assert len(SUBJECTS) == len(set(SUBJECTS))
    parts = {p: set(subjects(p)) for p in ("train", "val", "eval")}
    assert parts["train"].isdisjoint(parts["val"]) and parts["train"].isdisjoint(parts["eval"])
    assert parts["val"].isdisjoint(parts["eval"])
    assert set().union(*parts.values()) == set(SUBJECTS)
    assert subjects("test") == subjects("eval")
    for p in parts:
        used = {subject_of(r["base"]) for r in constraint_rows(400, p, seed=2)}
        assert used <= parts[p]


def test_rows_shape_and_determinism():
    rows = constraint_rows(300, "train", seed=5)
    assert rows == constraint_rows(300, "train", seed=5)
    assert rows != constraint_rows(300, "train", seed=6)
    assert constraint_rows(50, "eval", seed=5)[0]["prompt"] != rows[0]["prompt"]
    assert len({r["prompt"] for r in rows}) == 300
    for r in rows:
        assert set(r) == {"prompt", "constraints", "base"}
        cs = [Constraint.from_dict(c) for c in r["constraints"]]
        assert 1 <= len(cs) <= 2
        assert r["prompt"] == " ".join([r["base"], *(c.text() for c in cs)])
        if len(cs) == 2:
            assert cs[0].kind != cs[1].kind and frozenset(c.kind for c in cs) not in CONFLICTS
    assert {len(r["constraints"]) for r in constraint_rows(100, "train", 0, combos=(1,))} == {1}
    assert {len(r["constraints"]) for r in constraint_rows(100, "eval", 0, combos=(2,))} == {2}
    assert constraint_rows(0, "train") == []
    with pytest.raises(ValueError, match="each 1 or 2"):
        constraint_rows(5, "train", combos=(3,))
    with pytest.raises(ValueError, match="part must be one of"):
        constraint_rows(5, "dev")


def test_words_never_asked_for_and_forbidden_together():
    banned = [re.compile(rf"(?<!\w){w}(?!\w)", re.IGNORECASE) for w in FORBIDDEN]
    for text in [*KEYWORDS, *END_PHRASES]:
        assert not any(b.search(text) for b in banned), text
    assert not any("," in p for p in END_PHRASES)
    for r in constraint_rows(2000, "train", seed=3):
        cs = [Constraint.from_dict(c) for c in r["constraints"]]
        for c in cs:
            if c.kind == "keywords:forbidden_words":
                others = " ".join(o.text() for o in cs if o is not c)
                assert not any(
                    re.search(rf"(?<!\w){w}(?!\w)", others, re.I) for w in c.params["forbidden_words"]
                )


def test_rows_survive_a_parquet_round_trip():
    rows = constraint_rows(200, "eval", seed=4)
    back = pa.Table.from_pylist(rows).to_pylist()  # params gain every other kind's keys, as nulls
    assert any(None in c["params"].values() for r in back for c in r["constraints"])
    answer = "an answer. any other questions?"
    for r, b in zip(rows, back, strict=True):
        assert score_answer(b, answer) == score_answer(r, answer)


def witness(cs: list[Constraint]) -> str | None:
    """An answer that strictly follows every constraint in ``cs``, found by a small search; None if none."""
    p = {c.kind: c.params for c in cs}
    keywords = p.get("keywords:existence", {}).get("keywords", [])
    if "detectable_format:json_format" in p:
        return json.dumps({"text": " ".join(["answer", *keywords])})
    freq = p.get("keywords:frequency")
    repeated = (
        [freq["keyword"]] * freq["frequency"] if freq and freq["relation"] in ("at least", "exactly") else []
    )
    for n_sent in range(1, 8):
        for period in (True, False):
            for pad in (0, 5, 10, 20, 40, 60, 80, 100, 150):
                first = " ".join(["This is", *["plain"] * pad, *keywords, *repeated])
                if "detectable_format:number_highlighted_sections" in p:
                    first += " *one* *two* *three*"
                text = " ".join([first + ".", *["More here."] * (n_sent - 1)])
                text = text if period else text.removesuffix(".")
                if "detectable_format:number_bullet_lists" in p:
                    n = p["detectable_format:number_bullet_lists"]["num_bullets"]
                    text += "".join(f"\n* item {i}" for i in range(n))
                if "length_constraints:number_paragraphs" in p:
                    n = p["length_constraints:number_paragraphs"]["num_paragraphs"]
                    text = "\n***\n".join([text, *["Next part."] * (n - 1)])
                if "detectable_format:title" in p:
                    text = "<<A title>>\n" + text
                if "detectable_content:postscript" in p:
                    text += "\n" + p["detectable_content:postscript"]["postscript_marker"] + " note"
                if "startend:end_checker" in p:
                    text += "\n" + p["startend:end_checker"]["end_phrase"]
                if "startend:quotation" in p:
                    text = f'"{text}"'
                if "change_case:english_lowercase" in p:
                    text = text.lower()
                if "change_case:english_capital" in p:
                    text = text.upper()
                if all(check(c, text) for c in cs):
                    return text
    return None


def test_every_row_can_be_followed():
    """No row asks for the impossible: each has an answer passing all its constraints strictly, every
    compatible pair of kinds included."""
    rows = [*constraint_rows(1500, "train", seed=8, combos=(2,)), *constraint_rows(300, "eval", seed=8)]
    assert {kind_pair(r) for r in rows} - {None} == set(compatible_pairs())
    for r in rows:
        cs = [Constraint.from_dict(c) for c in r["constraints"]]
        answer = witness(cs)
        assert answer is not None, r["prompt"]
        assert score_answer(r, answer)["strict"]
    # and the conflicting pairs are conflicts indeed, for the witness at least
    lower, upper = Constraint("change_case:english_lowercase"), Constraint("change_case:english_capital")
    assert witness([lower, upper]) is None
