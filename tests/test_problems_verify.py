"""Issue 20's foundations: the problem generator is deterministic per seed, its answers are right (evaluated
independently from the solution's expression and replayed from the worked steps), its splits are disjoint and
the out-of-distribution split is harder; the strict checker rejects adversarial answers;
pass@k matches brute force."""

import itertools
import re
from math import comb

import pytest

from heredity.data.problems import evaluate, problems
from heredity.errors import HeredityError
from heredity.evals.verify import check, final_answer, load_checker, pass_at_k


@pytest.mark.parametrize("steps,digits", [(1, 1), (2, 1), (3, 2), (4, 3)])
def test_problems_are_deterministic_right_and_disjoint(steps, digits):
    a = problems(60, "train", steps, digits, seed=3)
    assert a == problems(60, "train", steps, digits, seed=3) and a != problems(
        60, "train", steps, digits, seed=4
    )
    test = problems(30, "test", steps, digits, seed=3)
    assert not {p["question"] for p in a} & {p["question"] for p in test}
    assert len({p["question"] for p in a}) == 60
    for p in a + test:
        assert evaluate(p["expression"]) == p["answer"] >= 0
        value = None
        for line in p["solution"].splitlines()[:-1]:  # replay the worked steps
            x, op, y, _, z = line.rstrip(".").split()
            assert value is None or int(x) == value
            want = {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y), "/": int(x) // int(y)}[
                op
            ]
            assert want == int(z) >= 0 and (op != "/" or int(x) % int(y) == 0)
            value = int(z)
        assert value == p["answer"] and final_answer(p["solution"]) == p["answer"] and check(p, p["solution"])
        assert len(p["solution"].splitlines()) == steps + 1
        lo, hi = {1: (2, 9), 2: (10, 99), 3: (100, 999)}[digits]
        assert lo <= int(re.search(r"has (\d+) ", p["question"]).group(1)) <= hi
    ood = problems(20, "ood", steps, digits, seed=3)
    assert all(p["steps"] == steps + 1 or p["digits"] == digits + 1 for p in ood)
    assert not {p["question"] for p in ood} & {p["question"] for p in a + test}


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="split must be"):
        problems(1, "val")
    with pytest.raises(ValueError, match="steps must be"):
        problems(1, steps=0)
    with pytest.raises(ValueError, match="not an arithmetic expression"):
        evaluate("__import__('os')")


@pytest.mark.parametrize(
    "text,want",
    [
        ("3 + 4 = 7.\n#### 7", 7),
        ("#### -12", -12),
        ("####7\n", 7),
        ("  #### 42  \n\n", 42),
        ("#### 7\n#### 8", None),  # several answers
        ("#### seven", None),
        ("#### 7.0", None),
        ("#### 1,000", None),
        ("#### 7\nI hope that helps!", None),  # trailing text
        ("The answer is 7.", None),
        ("", None),
        ("#### 7 apples", None),
        ("7\n####", None),
    ],
)
def test_the_checker_is_strict(text, want):
    assert final_answer(text) == want
    assert check({"answer": 7}, text) == (want == 7)


def test_user_checkers():
    p = {"answer": 12}
    rx = load_checker(r"regex:The answer is {answer}\.")
    assert (
        rx(p, "work...\nThe answer is 12.")
        and not rx(p, "The answer is 120.")
        and not rx(p, "The answer is 12. Yes")
    )
    f = load_checker("heredity.evals.verify:check")
    assert f(p, "#### 12") and not f(p, "#### 13")
    for bad, msg in [
        ("regex:no placeholder", "needs {answer}"),
        ("nomodule", "module:function"),
        ("heredity.evals.verify:nothing", "cannot import"),
    ]:
        with pytest.raises(HeredityError, match=re.escape(msg)):
            load_checker(bad)


def test_pass_at_k_matches_brute_force():
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                outcomes = [1] * c + [0] * (n - c)
                subsets = list(itertools.combinations(range(n), k))
                brute = sum(any(outcomes[i] for i in s) for s in subsets) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
