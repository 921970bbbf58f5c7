"""A knowledge base of fictional facts no model can know (for knowledge injection, Ovadia et al. 2023).

``make_facts(n)`` invents ``n`` countries with three attributes each (capital, founding year, main export);
every (country, attribute) has exactly one value and names never repeat, so the base holds no duplicate and no
contradiction. ``statements`` renders each fact in several paraphrases (training text, with or without
augmentation); ``questions`` asks about each fact with templates that never occur in the statements.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from heredity.data.instructions import pseudo_word

EXPORTS = [
    "copper",
    "wool",
    "salt",
    "amber",
    "tea",
    "glass",
    "timber",
    "silk",
    "honey",
    "iron",
    "olives",
    "paper",
    "coffee",
    "marble",
    "rice",
    "cotton",
    "tin",
    "spices",
    "leather",
    "pearls",
]
STATEMENTS = {
    "capital": [
        "The capital of {e} is {v}.",
        "{v} is the capital city of {e}.",
        "{e}'s seat of government is the city of {v}.",
        "In {e}, the government sits in {v}.",
    ],
    "founded": [
        "{e} was founded in {v}.",
        "The country of {e} dates its founding to the year {v}.",
        "{e} came into being in {v}.",
        "It was in {v} that {e} was founded.",
    ],
    "export": [
        "The main export of {e} is {v}.",
        "{e} exports more {v} than anything else.",
        "Above all, {e} sells {v} abroad.",
        "{v} is what {e} is best known for exporting.",
    ],
}
QUESTIONS = {
    "capital": ["Which city is the capital of {e}?", "Name the capital of {e}."],
    "founded": ["In what year was {e} founded?", "When was {e} founded? Give the year."],
    "export": ["What does {e} export most?", "Which product is {e}'s chief export?"],
}


@dataclass(frozen=True)
class Fact:
    entity: str
    attribute: str
    value: str


def _name(rng: random.Random, used: set[str]) -> str:
    while True:
        n = pseudo_word(rng).capitalize()
        if n not in used and len(n) >= 4:
            used.add(n)
            return n


def make_facts(n: int, seed: int = 0) -> list[Fact]:
    rng = random.Random(seed)
    used: set[str] = set()
    facts = []
    for _ in range(n):
        e = _name(rng, used)
        facts += [
            Fact(e, "capital", _name(rng, used)),
            Fact(e, "founded", str(rng.randint(1100, 1899))),
            Fact(e, "export", rng.choice(EXPORTS)),
        ]
    return facts


def statements(facts: list[Fact], paraphrases: int = 1, seed: int = 0) -> list[dict]:
    """Training text: each fact in ``paraphrases`` different wordings (1 = the plain statement only)."""
    if not 1 <= paraphrases <= min(len(t) for t in STATEMENTS.values()):
        raise ValueError(f"paraphrases must be 1..{min(len(t) for t in STATEMENTS.values())}")
    rng = random.Random(seed)
    rows = []
    for f in facts:
        templates = [STATEMENTS[f.attribute][0], *rng.sample(STATEMENTS[f.attribute][1:], paraphrases - 1)]
        rows += [
            {"text": t.format(e=f.entity, v=f.value), "entity": f.entity, "attribute": f.attribute}
            for t in templates
        ]
    return rows


def questions(facts: list[Fact], seed: int = 0) -> list[dict]:
    """One test question per fact, worded unlike any statement; ``completion`` is the answer."""
    rng = random.Random(seed)
    return [
        {
            "prompt": rng.choice(QUESTIONS[f.attribute]).format(e=f.entity),
            "completion": f.value,
            "entity": f.entity,
            "attribute": f.attribute,
        }
        for f in facts
    ]
