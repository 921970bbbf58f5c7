"""Built-in instruction data for the ChatGPT pipeline: templated instructions with verifiable answers, and a
synthetic preference rule (clearly labelled: ``source = "synthetic-rule"``) standing in for human rankings.

The instructions are small enough for a from-scratch model of a few million parameters to learn after a
few minutes of SFT on a CPU, and every answer is graded exactly (``tasks.grade``). Train and eval rows come
from disjoint inputs (words, numbers, templates), so an eval answer is never a memorized training row.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Sequence

from heredity.data.tasks import _split, grade, sentiment

FILLERS = ["Sure! ", "Of course. ", "Great question. ", "Let me think. ", "Here you go: "]
CODAS = [
    " I hope this helps!",
    " Let me know if you need more.",
    " That is my answer.",
    " Thanks for asking.",
]


CONSONANTS, VOWELS = "bdfgklmnprstvz", "aeiou"


def pseudo_word(rng: random.Random) -> str:
    """A pronounceable made-up word ("tavoku"): 70 syllables, 2–3 per word, ~350k words in all."""
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(rng.choice((2, 2, 3))))


def _word(part: str, rng: random.Random) -> str:
    """A made-up word from the ``part``'s side of a fixed 70/30 split, so a model must copy or transform it
    (there are too many to memorize) and eval words never occur in training."""
    while True:
        w = pseudo_word(rng)
        if (zlib.crc32(w.encode()) % 10 < 7) == (part == "train"):
            return w


def _words(n: int, part: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [_word(part, rng) for _ in range(n)]


def upper(n: int, part: str, seed: int = 0) -> list[dict]:
    return [
        {"prompt": f"Write {w} in capital letters.", "completion": w.upper()}
        for w in _words(n, part, seed * 3)
    ]


def larger(n: int, part: str, seed: int = 0) -> list[dict]:
    pairs = _split([(a, b) for a in range(1, 100) for b in range(1, 100) if a != b], part, 22)
    rng = random.Random(seed)
    return [
        {"prompt": f"Which is larger, {a} or {b}?", "completion": str(max(a, b))}
        for a, b in rng.sample(pairs, min(n, len(pairs)))
    ]


def first_letter(n: int, part: str, seed: int = 0) -> list[dict]:
    return [
        {"prompt": f"What is the first letter of {w}?", "completion": w[0]}
        for w in _words(n, part, seed * 3 + 1)
    ]


def successor(n: int, part: str, seed: int = 0) -> list[dict]:
    nums, rng = _split(range(1, 999), part, 23), random.Random(seed)
    return [
        {"prompt": f"What number comes after {k}?", "completion": str(k + 1)}
        for k in rng.sample(nums, min(n, len(nums)))
    ]


def repeat(n: int, part: str, seed: int = 0) -> list[dict]:
    return [{"prompt": f"Say {w} twice.", "completion": f"{w} {w}"} for w in _words(n, part, seed * 3 + 2)]


def short_sentiment(n: int, part: str, seed: int = 0) -> list[dict]:
    return [
        {
            "prompt": r["prompt"].replace(
                "\nIs this review positive or negative? Answer with one word.", " Positive or negative?"
            ),
            "completion": r["completion"],
        }
        for r in sentiment(n, part, seed)
    ]


INSTRUCTIONS: dict[str, Callable[..., list[dict]]] = {
    "upper": upper,
    "larger": larger,
    "first-letter": first_letter,
    "successor": successor,
    "repeat": repeat,
    "sentiment": short_sentiment,
}


def instruction_rows(kinds: Sequence[str], n_per_kind: int, part: str, seed: int) -> list[dict]:
    """Rows {prompt, completion, task}, interleaved over kinds in a seeded order."""
    rows = [{**r, "task": k} for k in kinds for r in INSTRUCTIONS[k](n_per_kind, part, seed)]
    random.Random(seed).shuffle(rows)
    return rows


def rule_score(answer: str, reference: str) -> int:
    """The synthetic preference rule: 2 = exactly the right answer, 1 = right answer wrapped in extra words,
    0 = wrong. Correct-and-concise beats correct-and-verbose beats wrong; equal scores are never paired."""
    a = answer.strip()
    if grade(a, reference) and "\n" not in a:
        return 2
    return 1 if re.search(rf"(?<![\w-]){re.escape(reference)}(?![\w-])", a, flags=re.IGNORECASE) else 0


PAIR_KINDS = {(2, 1): "concise > wordy", (2, 0): "correct > wrong", (1, 0): "wordy correct > wrong"}


def verbose(answer: str, rng: random.Random) -> str:
    return rng.choice(FILLERS) + answer + rng.choice(CODAS)


def wrong(row: dict, rng: random.Random) -> str:
    """A plausible wrong answer to a built-in instruction (another row's answer format)."""
    ref = row["completion"]
    if ref.lstrip("-").isdigit():
        return str(int(ref) + rng.choice([-2, -1, 1, 2, 10]))
    if ref in ("positive", "negative"):
        return "negative" if ref == "positive" else "positive"
    w = pseudo_word(rng)
    return {"upper": w.upper(), "first-letter": w[0], "repeat": f"{w} {w}"}.get(row.get("task", ""), w)


def synthetic_preferences(rows: Sequence[dict], samples: Sequence[Sequence[str]], seed: int) -> list[dict]:
    """Preference pairs ranked by ``rule_score`` over candidate answers to each prompt.

    Candidates: the model's own samples (as labellers rank a model's answers), the reference answer, a
    verbose correct answer, and a wrong one. Each prompt gives up to three pairs whose rule scores differ.
    """
    rng = random.Random(seed)
    pairs = []
    for row, own in zip(rows, samples, strict=True):
        cands = list(
            dict.fromkeys(
                [
                    *(s.strip() for s in own if s.strip()),
                    row["completion"],
                    verbose(row["completion"], rng),
                    wrong(row, rng),
                ]
            )
        )
        ranked = sorted(cands, key=lambda a: rule_score(a, row["completion"]), reverse=True)
        picks = set()
        for _ in range(6):
            i, j = sorted(rng.sample(range(len(ranked)), 2))
            if (
                rule_score(ranked[i], row["completion"]) == rule_score(ranked[j], row["completion"])
                or (i, j) in picks
            ):
                continue
            picks.add((i, j))
            if len(picks) == 3:
                break
        for i, j in sorted(picks):
            kind = PAIR_KINDS[
                (rule_score(ranked[i], row["completion"]), rule_score(ranked[j], row["completion"]))
            ]
            pairs.append(
                {
                    "prompt": row["prompt"],
                    "chosen": ranked[i],
                    "rejected": ranked[j],
                    "task": row.get("task", ""),
                    "kind": kind,
                    "source": "synthetic-rule",
                }
            )
    return pairs
