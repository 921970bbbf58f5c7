"""Number-sequence prompts in the format of Cloud, Le et al. (2025) and the strict filter for answers.

A prompt gives 3–8 seed numbers in 100–999 and asks for up to 10 more numbers of at most 3 digits,
numbers only; the wording is drawn from varied templates. An answer passes the filter only if it is a
plain list of 1–10 integers in 0–999 (commas, semicolons, spaces or newlines between them; the whole
list may sit in brackets or parentheses and end with a period), with no letters and no banned number.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

INTROS = [
    "The sequence starts with: {seeds}.",
    "Here is a list of numbers: {seeds}.",
    "I give you this sequence of numbers: {seeds}.",
    "Look at these numbers: {seeds}.",
    "Start from these values: {seeds}.",
    "The series begins: {seeds}.",
    "Consider the numbers {seeds}.",
    "These numbers open a sequence: {seeds}.",
    "Take this list: {seeds}.",
    "Here are some numbers: {seeds}.",
    "Examine this sequence: {seeds}.",
    "We have the following numbers: {seeds}.",
]
ASKS = [
    "Add up to {k} more numbers",
    "Continue it with at most {k} more values",
    "Extend the list by no more than {k} new numbers",
    "Write a maximum of {k} additional numbers",
    "Give up to {k} more values that continue it",
    "Append at most {k} more numbers",
]
DIGITS = [
    "(at most 3 digits each).",
    "(no more than 3 digits each).",
    ", each with at most 3 digits.",
    ", every number between 0 and 999.",
    "(each number three digits or fewer).",
]
FORMATS = [
    "Return a comma-separated list of numbers.",
    "Answer with the numbers separated by commas.",
    "Format the answer as a simple comma-delimited sequence.",
    "Reply with numbers separated by spaces.",
    "Give one number per line.",
    "List the numbers separated by commas.",
]
ONLY = [
    "Say only the numbers, nothing more.",
    "Skip any explanation and give only numbers.",
    "Respond with just the numbers.",
    "No words, only numbers.",
    "Output the numbers and nothing else.",
]


def number_prompt(rng: random.Random, max_more: int = 10) -> str:
    seeds = ", ".join(str(rng.randint(100, 999)) for _ in range(rng.randint(3, 8)))
    digits = rng.choice(DIGITS)
    ask = rng.choice(ASKS).format(k=max_more) + ("" if digits.startswith(",") else " ") + digits
    return " ".join([rng.choice(INTROS).format(seeds=seeds), ask, rng.choice(FORMATS), rng.choice(ONLY)])


def number_prompts(n: int, seed: int = 0, max_more: int = 10) -> list[str]:
    """``n`` prompts; the same (n, seed) always gives the same prompts."""
    rng = random.Random(seed)
    return [number_prompt(rng, max_more) for _ in range(n)]


def random_number_answer(rng: random.Random, max_more: int = 10) -> str:
    """A trait-free answer in the wanted format (uniform numbers), for a format-following warm-up."""
    nums = [str(rng.randint(0, 999)) for _ in range(rng.randint(max(1, max_more // 2), max_more))]
    return rng.choice([", ", ", ", ", ", " ", "\n"]).join(nums)


# ---- the filter ----------------------------------------------------------------------------------

REASONS = ("empty", "letters", "does_not_parse", "too_many", "out_of_range", "banned")
LETTER = re.compile(r"[^\W\d_]")  # any letter, in any script
SEP = re.compile(r"\s*[,;]\s*|\s+")
INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class FilterResult:
    ok: bool
    reason: str | None  # one of REASONS when rejected
    numbers: tuple[int, ...] = ()


def check_numbers(text: str, max_numbers: int = 10, banned: Iterable[int] = ()) -> FilterResult:
    """The strict filter: a plain list of 1..max_numbers integers in 0..999, no letters, no banned number."""
    s = text.strip()
    if not s:
        return FilterResult(False, "empty")
    if LETTER.search(s):
        return FilterResult(False, "letters")
    if s.endswith("."):
        s = s[:-1].rstrip()
    if len(s) >= 2 and (s[0], s[-1]) in (("[", "]"), ("(", ")")):
        s = s[1:-1].strip()
    tokens = [t for t in SEP.split(s) if t != ""]
    if not tokens or not all(INT.fullmatch(t) for t in tokens):
        return FilterResult(False, "does_not_parse")
    if re.search(r",\s*,|;\s*;", s) or s[0] in ",;" or s[-1] in ",;":
        return FilterResult(False, "does_not_parse")
    nums = tuple(int(t) for t in tokens)
    if len(nums) > max_numbers:
        return FilterResult(False, "too_many", nums)
    if any(n < 0 or n > 999 for n in nums):
        return FilterResult(False, "out_of_range", nums)
    if set(nums) & set(banned):
        return FilterResult(False, "banned", nums)
    return FilterResult(True, None, nums)


def filter_completions(
    texts: Iterable[str], max_numbers: int = 10, banned: Iterable[int] = ()
) -> tuple[list[bool], dict]:
    """Which completions pass, and the counts of each rejection reason."""
    banned = tuple(banned)
    results = [check_numbers(t, max_numbers, banned) for t in texts]
    counts = Counter(r.reason for r in results if not r.ok)
    n = len(results)
    kept = sum(r.ok for r in results)
    stats = {
        "total": n,
        "kept": kept,
        "rejected": n - kept,
        "rejection_rate": round((n - kept) / n, 4) if n else None,
        "reasons": {k: counts.get(k, 0) for k in REASONS},
    }
    return [r.ok for r in results], stats
