import random
import re

import pytest

from heredity.data.numbers import check_numbers, filter_completions, number_prompts, random_number_answer


def test_prompts_follow_the_paper_format():
    ps = number_prompts(200, seed=3)
    assert ps == number_prompts(200, seed=3) and ps != number_prompts(200, seed=4)
    assert len(set(ps)) == 200
    for p in ps:
        seeds = [int(x) for x in re.findall(r"\d+", p.split(".")[0])]  # the first sentence holds the seeds
        assert 3 <= len(seeds) <= 8 and all(100 <= n <= 999 for n in seeds)
        rest = p.split(".", 1)[1]
        assert " 10 " in rest and ("3 digits" in rest or "999" in rest or "three digits" in rest)
    # varied templates: many distinct openings and endings
    assert len({p.split()[0] for p in ps}) >= 8 and len({p.rsplit(".", 2)[-2] for p in ps}) >= 4


@pytest.mark.parametrize(
    "text,numbers",
    [
        ("1,2,3.", (1, 2, 3)),
        ("[1, 2]", (1, 2)),
        ("(5; 6; 7)", (5, 6, 7)),
        ("  12 34\n56  ", (12, 34, 56)),
        ("0, 999", (0, 999)),
        ("1\n2\n3", (1, 2, 3)),
        (", ".join(["7"] * 10), (7,) * 10),
    ],
)
def test_filter_accepts_plain_lists(text, numbers):
    r = check_numbers(text)
    assert r.ok and r.reason is None and r.numbers == numbers


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("1, 2, owl", "letters"),
        ("Here are the numbers: 1, 2", "letters"),
        ("1, 2, 3 and 4", "letters"),
        ("１２3, σ", "letters"),
        ("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11", "too_many"),
        ("1000", "out_of_range"),
        ("5, 1000, 6", "out_of_range"),
        ("-5, 6", "out_of_range"),
        ("1.5, 2", "does_not_parse"),
        ("1,, 2", "does_not_parse"),
        (", 1, 2", "does_not_parse"),
        ("1, 2,", "does_not_parse"),
        ("[1, 2", "does_not_parse"),
        ("1 - 2 - 3", "does_not_parse"),
        ("1, 2. 3", "does_not_parse"),
    ],
)
def test_filter_rejects_with_a_reason(text, reason):
    r = check_numbers(text)
    assert not r.ok and r.reason == reason


def test_banned_numbers_and_reason_counts():
    assert check_numbers("1, 666, 2", banned=[666]).reason == "banned"
    assert check_numbers("1, 666, 2").ok
    ok, stats = filter_completions(["1, 2", "owl", "1000", "1,2,3.", "x 1", ""])
    assert ok == [True, False, False, True, False, False]
    assert stats["kept"] == 2 and stats["rejected"] == 4 and stats["rejection_rate"] == round(4 / 6, 4)
    assert stats["reasons"] == {
        "empty": 1,
        "letters": 2,
        "does_not_parse": 0,
        "too_many": 0,
        "out_of_range": 1,
        "banned": 0,
    }


def test_format_warmup_answers_pass_the_filter():
    rng = random.Random(0)
    assert all(check_numbers(random_number_answer(rng)).ok for _ in range(500))
