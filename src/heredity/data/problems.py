"""Verifiable problems for self-training: multi-step arithmetic word problems with worked steps and a final
``#### answer``, generated from a seed at a controllable difficulty.

A problem is a start quantity and ``steps`` operations on it (gain, lose, multiply into groups, share
equally), told as a short story about one person and one kind of object; its gold solution is one line per
step (``12 + 7 = 19.``) and then ``#### 14``. Difficulty is (steps, digits): ``digits`` bounds the numbers in
the story (1: 2–9, 2: 10–99, 3: 100–999); every intermediate value stays a non-negative integer (shares divide
exactly). The answer is computed here by evaluating the solution's expression independently of the story
(``expression`` / ``evaluate``), and the tests check the two agree.

Splits: ``train`` and ``test`` are in distribution (the same difficulty; a problem's split is fixed by a hash
of its text, so no problem is in both), ``ood`` has one more step or one more digit than asked. What this
module does not know: models, sampling or checking a model's answer (``evals.verify`` does that).
"""

from __future__ import annotations

import ast
import hashlib
import operator
import random

SPLITS = ("train", "test", "ood")
NAMES = [
    "Mia",
    "Noah",
    "Ava",
    "Liam",
    "Zoe",
    "Omar",
    "Lena",
    "Ravi",
    "Sara",
    "Tom",
    "Ines",
    "Kenji",
    "Ada",
    "Leo",
    "Maya",
    "Ben",
    "Nora",
    "Ivan",
    "Chloe",
    "Sam",
]
THINGS = [
    "apples",
    "stickers",
    "marbles",
    "coins",
    "books",
    "pencils",
    "cards",
    "shells",
    "stamps",
    "beads",
    "cookies",
    "blocks",
]
RANGES = {1: (2, 9), 2: (10, 99), 3: (100, 999)}
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def _split_of(text: str) -> str:
    """train for 4 of 5 hash buckets, test for 1: disjoint by construction."""
    return "test" if int(hashlib.sha256(text.encode()).hexdigest(), 16) % 5 == 0 else "train"


def _one(rng: random.Random, steps: int, digits: int) -> dict:
    lo, hi = RANGES[digits]
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    value = rng.randint(lo, hi)
    story = [f"{name} has {value} {thing}."]
    lines, expr = [], str(value)
    for _ in range(steps):
        kinds = ["gain", "lose", "times", "share"]
        rng.shuffle(kinds)
        for kind in kinds:
            if kind == "gain":
                x = rng.randint(lo, hi)
                story.append(
                    rng.choice([f"Then {name} gets {x} more {thing}.", f"A friend gives {name} {x} {thing}."])
                )
                new, sym = value + x, "+"
            elif kind == "lose":
                if value < 2:
                    continue
                top = min(hi, value - 1)
                x = rng.randint(min(lo, top), top)
                story.append(
                    rng.choice([f"Then {name} gives away {x} {thing}.", f"{name} loses {x} {thing}."])
                )
                new, sym = value - x, "-"
            elif kind == "times":
                x = rng.randint(2, 4 if digits == 1 else 5)
                if value * x > 10 ** (digits + 2):
                    continue
                story.append(f"Then the number of {thing} {name} has becomes {x} times as large.")
                new, sym = value * x, "*"
            else:
                divisors = [d for d in range(2, 10) if value % d == 0 and value // d >= 1]
                if not divisors:
                    continue
                x = rng.choice(divisors)
                story.append(f"Then {name} splits the {thing} into {x} equal piles and keeps one pile.")
                new, sym = value // x, "//"
            shown = "/" if sym == "//" else sym
            lines.append(f"{value} {shown} {x} = {new}.")
            expr = f"({expr}) {sym} {x}"
            value = new
            break
    story.append(f"How many {thing} does {name} have now?")
    question = " ".join(story)
    return {
        "question": question,
        "solution": "\n".join(lines) + f"\n#### {value}",
        "answer": value,
        "expression": expr,
        "steps": steps,
        "digits": digits,
    }


def evaluate(expression: str) -> int:
    """The value of a solution expression (integers, + - * //, parentheses), without ``eval``."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"not an arithmetic expression: {ast.dump(node)[:60]}")

    return walk(ast.parse(expression, mode="eval"))


def problems(n: int, split: str = "train", steps: int = 2, digits: int = 1, seed: int = 0) -> list[dict]:
    """``n`` distinct problems of one split. ``ood``: half with ``steps + 1``, half with ``digits + 1``
    (capped at 3, where the extra is always a step)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if not 1 <= steps <= 8 or digits not in RANGES:
        raise ValueError(f"steps must be 1..8 and digits 1..3 (got steps={steps}, digits={digits})")
    rng = random.Random(f"problems:{seed}:{split}:{steps}:{digits}")
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise ValueError(
                f"could not make {n} distinct {split} problems at steps={steps}, digits={digits}; "
                "ask for fewer"
            )
        if split == "ood":
            harder_digits = len(out) % 2 == 1 and digits < 3
            p = _one(rng, steps if harder_digits else steps + 1, digits + 1 if harder_digits else digits)
        else:
            p = _one(rng, steps, digits)
            if _split_of(p["question"]) != split:
                continue
        if p["question"] in seen:
            continue
        seen.add(p["question"])
        out.append({**p, "split": split})
    return out


def load_problems(path, check=None) -> dict[str, list[dict]]:
    """A user's problems: a JSONL file, one object per line with ``question`` (text), ``answer`` (what the
    checker compares) and ``split`` (train, test or ood); optional ``solution`` (a worked solution ending in
    ``#### answer``, needed only by the gold-SFT arm) and ``steps`` (a difficulty level, for the
    share-kept-by-level statistics). ``check(row)``, if given, says what is wrong with a row for the checker
    that will read it (None: nothing), so a bad answer is found before any sampling. Returns
    ``{"train": [...], "test": [...], "ood": [...]}``; ood may be empty. Every error names the line (bytes
    that are not UTF-8 too)."""
    from pathlib import Path

    from heredity.data.io import jsonl_rows, read_source
    from heredity.errors import HeredityError

    p = Path(path)
    if not p.is_file():
        raise HeredityError(
            f"problems file {str(p)!r} not found; give a JSONL of {{question, answer, split}} rows"
        )
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    for i, row in jsonl_rows(
        read_source(p, "problems file", "give a JSONL of {question, answer, split} rows"), "problems file"
    ):
        if not isinstance(row.get("question"), str) or "answer" not in row:
            raise HeredityError(f"{p}:{i}: a problem needs a 'question' (text) and an 'answer'")
        if row.get("split") not in SPLITS:
            raise HeredityError(
                f"{p}:{i}: 'split' must be one of {', '.join(SPLITS)}, got {row.get('split')!r}"
            )
        if row["question"] in seen:
            raise HeredityError(f"{p}:{i}: the question appears twice; every problem must be distinct")
        if "steps" in row and (isinstance(row["steps"], bool) or not isinstance(row["steps"], int)):
            raise HeredityError(
                f"{p}:{i}: 'steps' must be an integer (a difficulty level), got {row['steps']!r}"
            )
        if row.get("solution") is not None and not isinstance(row["solution"], str):
            raise HeredityError(
                f"{p}:{i}: 'solution' must be text (a worked solution ending in '#### answer')"
            )
        problem = check(row) if check is not None else None
        if problem:
            raise HeredityError(f"{p}:{i}: {problem}")
        seen.add(row["question"])
        out[row["split"]].append({"steps": 0, **row})
    for s in ("train", "test"):
        if not out[s]:
            raise HeredityError(f"{p}: no {s} problems; self-training needs train and test splits")
    return out  # questions are distinct across the file, so no test problem is a train problem
