"""Small, automatically graded tasks for merging experiments: generated rows and an exact-match grader.

Each task makes (prompt, completion) rows from a seeded generator; train and eval rows come from disjoint
parts of the input space (different operand pairs, words, templates), so an eval answer is never a
memorized training row. ``grade`` compares the first line of a generated answer with the reference.
"""

from __future__ import annotations

import random
from collections.abc import Callable

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
WORDS = ("apple bread chair dance eagle flame grape house index jelly knife lemon mango night ocean piano queen "
         "river sugar tiger uncle voice water yacht zebra angle beach cloud dream earth field glass heart input "
         "juice kitten light metal north olive paper quiet radio stone table under value wheel youth amber brick "
         "candle desert ember forest garden harbor island jungle kettle ladder marble nectar orbit pepper quartz "
         "rocket saddle tunnel velvet window yellow zipper anchor basket circle donkey engine falcon goblin hammer "
         "insect jacket kernel lizard magnet needle oyster parrot rabbit salmon turtle violin walrus").split()
POSITIVE = ["wonderful", "delicious", "friendly", "excellent", "delightful", "superb", "charming", "fantastic",
            "lovely", "brilliant", "pleasant", "outstanding"]
NEGATIVE = ["terrible", "bland", "rude", "awful", "disappointing", "dreadful", "noisy", "horrible", "dirty",
            "mediocre", "unpleasant", "tasteless"]
SUBJECTS = ["food", "service", "room", "staff", "coffee", "music", "view", "breakfast", "movie", "book", "game", "show"]
TEMPLATES = ["The {s} was {a}.", "Honestly, the {s} was {a}.", "I found the {s} {a}.", "What a {a} {s}!",
             "Everything about the {s} felt {a}.", "My verdict: the {s} is {a}."]


def number_words(n: int) -> str:
    """0..999 in English words: 47 → forty-seven, 305 → three hundred five."""
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))


def _split(items: list, part: str, seed: int) -> list:
    items = list(items)
    random.Random(seed).shuffle(items)
    cut = int(len(items) * 0.7)
    return items[:cut] if part == "train" else items[cut:]


def addition(n: int, part: str, seed: int = 0) -> list[dict]:
    pairs = _split([(a, b) for a in range(10, 100) for b in range(10, 100)], part, 11)
    rng = random.Random(seed)
    return [{"prompt": f"What is {a} + {b}? Answer with the number only.", "completion": str(a + b)}
            for a, b in rng.sample(pairs, min(n, len(pairs)))]


def reverse(n: int, part: str, seed: int = 0) -> list[dict]:
    """Letters given one by one ("t i g e r" → "r e g i t"): a subword tokenizer sees each letter, so the task is
    about order, not spelling (spelling whole words backwards got 0% after a quick fine-tune of SmolLM2-135M)."""
    words = _split(WORDS, part, 12)
    rng = random.Random(seed)
    return [{"prompt": f"Reverse the order of these letters: {' '.join(w)}. Answer with the letters only.",
             "completion": " ".join(w[::-1])} for w in (rng.choice(words) for _ in range(n))]


def sentiment(n: int, part: str, seed: int = 0) -> list[dict]:
    tmpl = _split(TEMPLATES, part, 13) if part == "train" else TEMPLATES[:]
    subjects = _split(SUBJECTS, part, 14)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        pos = rng.random() < 0.5
        adj = rng.choice(POSITIVE if pos else NEGATIVE)
        review = rng.choice(tmpl).format(s=rng.choice(subjects), a=adj)
        rows.append({"prompt": f"Review: {review}\nIs this review positive or negative? Answer with one word.",
                     "completion": "positive" if pos else "negative"})
    return rows


def words(n: int, part: str, seed: int = 0) -> list[dict]:
    nums = _split(range(1, 1000), part, 15)
    rng = random.Random(seed)
    return [{"prompt": f"Write the number {k} in English words. Answer with the words only.", "completion": number_words(k)}
            for k in rng.sample(nums, min(n, len(nums)))]


TASKS: dict[str, Callable[..., list[dict]]] = {"addition": addition, "reverse": reverse, "sentiment": sentiment,
                                               "words": words}


def grade(answer: str, reference: str) -> bool:
    """Exact match of the answer's first line (case, surrounding spaces and a final period ignored)."""
    first = answer.strip().splitlines()[0] if answer.strip() else ""
    return first.strip().rstrip(".").strip().lower() == reference.strip().lower()
