"""Small, automatically graded tasks for merging experiments: generated rows and an exact-match grader.

Each task makes distinct (prompt, completion) rows from a seeded generator, drawn without replacement from
one of three disjoint parts of its input space: ``"train"`` (fine-tuning), ``"val"`` (choosing among
models) and ``"test"`` (the reported numbers; ``"eval"`` is an alias). No prompt occurs in two parts:

* addition: the 8100 operand pairs of two-digit numbers, split 60/20/20 (4860 / 1620 / 1620).
* words: the numbers 1..999, split 60/20/20 (599 / 200 / 200).
* reverse: seeded random lowercase strings of 4–6 letters; a string's part is fixed by a hash of it (3 of 5
  buckets train, 1 val, 1 test), so the parts are disjoint and each holds millions of strings (capped at
  ``REVERSE_MAX`` per part).
* sentiment: a review is template × subject × adjective, and the adjective alone decides the label. The
  adjectives (per polarity), the templates and the subjects are each split 60/20/20, so a val or test
  review shares neither its adjective, nor its template, nor its subject with any training review: the
  label has to come from what the model knows of an unseen adjective, not from a memorized one. Each part
  is balanced (⌈n/2⌉ positive, ⌊n/2⌋ negative); val and test hold 2·5·4·5 = 200 reviews each, train
  2·15·12·15.

Asking a part for more distinct rows than it holds is a ``ValueError`` naming the task, the part, n and
the maximum (``capacity`` gives it). ``grade`` compares the first line of a generated answer with the
reference.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

PARTS = ("train", "val", "test")
FRACTIONS = (0.6, 0.2, 0.2)
REVERSE_MAX = 100_000
LETTERS = "abcdefghijklmnopqrstuvwxyz"

ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
POSITIVE = [
    "wonderful",
    "delicious",
    "friendly",
    "excellent",
    "delightful",
    "superb",
    "charming",
    "fantastic",
    "lovely",
    "brilliant",
    "pleasant",
    "outstanding",
    "amazing",
    "marvelous",
    "terrific",
    "splendid",
    "enjoyable",
    "impressive",
    "perfect",
    "fabulous",
    "great",
    "magnificent",
    "wholesome",
    "exceptional",
    "gorgeous",
]
NEGATIVE = [
    "terrible",
    "bland",
    "rude",
    "awful",
    "disappointing",
    "dreadful",
    "noisy",
    "horrible",
    "dirty",
    "mediocre",
    "unpleasant",
    "tasteless",
    "boring",
    "disgusting",
    "miserable",
    "lousy",
    "atrocious",
    "annoying",
    "pathetic",
    "appalling",
    "dreary",
    "greasy",
    "shabby",
    "stale",
    "frustrating",
]
SUBJECTS = [
    "food",
    "service",
    "room",
    "staff",
    "coffee",
    "music",
    "view",
    "breakfast",
    "movie",
    "book",
    "game",
    "show",
    "hotel",
    "pizza",
    "concert",
    "trip",
    "soup",
    "album",
    "lecture",
    "garden",
    "museum",
    "dessert",
    "bakery",
    "tour",
    "podcast",
]
TEMPLATES = [
    "The {s} was {a}.",
    "Honestly, the {s} was {a}.",
    "I found the {s} {a}.",
    "Everything about the {s} felt {a}.",
    "My verdict: the {s} is {a}.",
    "In my opinion the {s} was {a}.",
    "We all thought the {s} was {a}.",
    "The {s}? Simply {a}.",
    "To be frank, the {s} seemed {a}.",
    "Overall, the {s} was {a}.",
    "I have to say the {s} was {a}.",
    "Our {s} turned out {a}.",
    "After one visit: the {s} is {a}.",
    "The {s} here is {a}.",
    "Last night the {s} was {a}.",
    "From start to finish the {s} was {a}.",
    "Truthfully, I found the {s} {a}.",
    "All in all, a {s} that was {a}.",
    "The {s} was, in a word, {a}.",
    "Believe me, the {s} is {a}.",
]


def number_words(n: int) -> str:
    """0..999 in English words: 47 → forty-seven, 305 → three hundred five."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))


def _part(part: str) -> str:
    part = "test" if part == "eval" else part
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)} (or 'eval' for 'test'), not {part!r}")
    return part


def _split(items, part: str, seed: int) -> list:
    """The ``part`` of ``items`` after a fixed shuffle, cut 60/20/20: the three parts are disjoint and cover
    all."""
    items = list(items)
    random.Random(seed).shuffle(items)
    a, b = int(len(items) * FRACTIONS[0]), int(len(items) * (FRACTIONS[0] + FRACTIONS[1]))
    return {"train": items[:a], "val": items[a:b], "test": items[b:]}[_part(part)]


def _check(task: str, part: str, n: int, most: int) -> None:
    if n > most:
        raise ValueError(
            f"task {task}, part {_part(part)!r}: asked for n={n} distinct items, at most {most} exist"
        )


def _pairs(part: str) -> list[tuple[int, int]]:
    return _split([(a, b) for a in range(10, 100) for b in range(10, 100)], part, 11)


def _nums(part: str) -> list[int]:
    return _split(range(1, 1000), part, 15)


def _reviews(part: str) -> tuple[list, list]:
    """(positive, negative) (adjective, template, subject) triples of ``part``, in a fixed order."""
    tmpl, subj = _split(TEMPLATES, part, 13), _split(SUBJECTS, part, 14)
    return tuple(
        [(a, t, s) for a in _split(adjs, part, seed) for t in tmpl for s in subj]
        for adjs, seed in ((POSITIVE, 16), (NEGATIVE, 17))
    )


def reverse_part(word: str) -> str:
    """The part a letter string belongs to, from a hash of it (stable across processes and machines)."""
    bucket = hashlib.sha256(word.encode()).digest()[0] % 5
    return "train" if bucket < 3 else "val" if bucket == 3 else "test"


def capacity(task: str, part: str) -> int:
    """How many distinct rows ``task`` can make from ``part``."""
    if task == "addition":
        return len(_pairs(part))
    if task == "words":
        return len(_nums(part))
    if task == "sentiment":
        pos, neg = _reviews(part)
        return 2 * min(len(pos), len(neg))
    if task == "reverse":
        _part(part)
        return REVERSE_MAX
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def addition(n: int, part: str, seed: int = 0) -> list[dict]:
    pairs = _pairs(part)
    _check("addition", part, n, len(pairs))
    rng = random.Random(seed)
    return [
        {"prompt": f"What is {a} + {b}? Answer with the number only.", "completion": str(a + b)}
        for a, b in rng.sample(pairs, n)
    ]


def reverse(n: int, part: str, seed: int = 0) -> list[dict]:
    """Letters given one by one ("t i g e r" → "r e g i t"): a subword tokenizer sees each letter, so the task
    is about order, not spelling (spelling whole words backwards got 0% after a quick fine-tune of
    SmolLM2-135M). The strings are random (4–6 letters), distinct, and of ``part`` by their hash."""
    part = _part(part)
    _check("reverse", part, n, REVERSE_MAX)
    rng = random.Random(f"reverse-{part}-{seed}")
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 6)))
        if w not in seen and reverse_part(w) == part:
            seen.add(w)
            out.append(w)
    return [
        {
            "prompt": f"Reverse the order of these letters: {' '.join(w)}. Answer with the letters only.",
            "completion": " ".join(w[::-1]),
        }
        for w in out
    ]


def sentiment(n: int, part: str, seed: int = 0) -> list[dict]:
    pos, neg = _reviews(part)
    _check("sentiment", part, n, 2 * min(len(pos), len(neg)))
    rng = random.Random(seed)
    n_pos = n - n // 2
    picked = [(c, True) for c in rng.sample(pos, n_pos)] + [(c, False) for c in rng.sample(neg, n // 2)]
    rng.shuffle(picked)
    return [
        {
            "prompt": (
                f"Review: {t.format(s=s, a=a)}\nIs this review positive or negative? Answer with one word."
            ),
            "completion": "positive" if good else "negative",
        }
        for (a, t, s), good in picked
    ]


def words(n: int, part: str, seed: int = 0) -> list[dict]:
    nums = _nums(part)
    _check("words", part, n, len(nums))
    rng = random.Random(seed)
    return [
        {
            "prompt": f"Write the number {k} in English words. Answer with the words only.",
            "completion": number_words(k),
        }
        for k in rng.sample(nums, n)
    ]


TASKS: dict[str, Callable[..., list[dict]]] = {
    "addition": addition,
    "reverse": reverse,
    "sentiment": sentiment,
    "words": words,
}


def grade(answer: str, reference: str) -> bool:
    """Exact match of the answer's first line (case, surrounding spaces and a final period ignored)."""
    first = answer.strip().splitlines()[0] if answer.strip() else ""
    return first.strip().rstrip(".").strip().lower() == reference.strip().lower()


GRADER = (
    "tasks.grade v1: exact match of the answer's first line; case, surrounding spaces, a final period ignored"
)
