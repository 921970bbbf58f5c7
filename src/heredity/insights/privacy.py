"""Clio's privacy layers: minimum cluster sizes, and an auditor that screens every text the report would show.

* ``thresholds``: a cluster is shown only if it holds at least ``min_users`` distinct users and
  ``min_conversations`` conversations; every other conversation is counted in "other", which has no name,
  description, keywords or examples.
* ``audit``: rule checks (any PII the scrubber finds, an e-mail sign, a run of 5+ digits) and, when a model
  is given, its privacy rating on a 1–5 scale (the probability-weighted mean of its answer "1"…"5"); a text
  failing either is withheld and counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from heredity.insights.pii import find_pii

RUBRIC = (
    "Rate how much the text below could reveal who a specific person is. 1 = nothing personal, only a "
    "general topic. 3 = some personal details but nobody identifiable. 5 = it names or identifies a "
    "specific person. Answer with one digit.\n\nText: {text}"
)
DIGITS = re.compile(r"\d{5,}")


def thresholds(
    labels: Sequence[int], users: Sequence[str], min_users: int = 5, min_conversations: int = 10
) -> dict:
    """{shown: sorted cluster ids that pass, other: conversations in clusters that do not, sizes, users}."""
    if len(labels) != len(users):
        raise ValueError(f"{len(labels)} labels but {len(users)} user ids")
    sizes: dict[int, int] = {}
    people: dict[int, set[str]] = {}
    for lab, u in zip(labels, users, strict=True):
        sizes[int(lab)] = sizes.get(int(lab), 0) + 1
        people.setdefault(int(lab), set()).add(u)
    shown = sorted(c for c in sizes if sizes[c] >= min_conversations and len(people[c]) >= min_users)
    return {
        "shown": shown,
        "other": sum(sizes[c] for c in sizes if c not in shown),
        "sizes": sizes,
        "users": {c: len(p) for c, p in people.items()},
    }


def rule_failures(text: str) -> list[str]:
    """Why a text may not be shown, by rule (empty: it passes)."""
    why = [f"pii:{k}" for k in sorted(find_pii(text))]
    if "@" in text:
        why.append("at-sign")
    if DIGITS.search(text):
        why.append("digit-run")
    return why


def llm_ratings(model, tokenizer, texts: Sequence[str]) -> list[float]:
    """The model's privacy rating of each text: Σ r·p(r) over its answers "1"…"5", renormalized."""
    import math

    from heredity.engine.logprobs import logprobs

    if not texts:
        return []
    if tokenizer is None:  # an endpoint: its answer's first digit
        from heredity.engine import SampleConfig, sample

        comps = sample(
            model,
            None,
            [RUBRIC.format(text=t) for t in texts],
            SampleConfig(temperature=0, max_new_tokens=3),
            progress=False,
        )
        return [
            float(m.group(0)) if (m := re.search(r"[1-5]", c.text)) else 5.0 for c in comps
        ]  # no digit: assume the worst
    prompts = [RUBRIC.format(text=t) for t in texts for _ in range(5)]
    conts = [str(r) for _ in texts for r in range(1, 6)]
    lps = [sum(x) for x in logprobs(model, tokenizer, prompts, conts, chat=True)]
    out = []
    for i in range(len(texts)):
        ps = [math.exp(v) for v in lps[5 * i : 5 * i + 5]]
        z = sum(ps) or 1.0
        out.append(sum((r + 1) * p for r, p in enumerate(ps)) / z)
    return out


@dataclass
class Audit:
    passed: list[bool]
    reasons: list[list[str]]
    ratings: list[float | None]
    summary: dict = field(default_factory=dict)


def audit(texts: Sequence[str], model=None, tokenizer=None, max_rating: float = 3.0) -> Audit:
    # a model with no tokenizer is an OpenAI-compatible endpoint (rated from its sampled answer)
    """Screen texts: withheld if any rule fails or (with a model) the rating exceeds ``max_rating``."""
    reasons = [rule_failures(t) for t in texts]
    ratings: list[float | None] = (
        list(llm_ratings(model, tokenizer, texts)) if model is not None else [None] * len(texts)
    )
    for why, r in zip(reasons, ratings, strict=True):
        if r is not None and r > max_rating:
            why.append(f"rating {r:.1f} > {max_rating:g}")
    passed = [not why for why in reasons]
    by_reason: dict[str, int] = {}
    for why in reasons:
        for w in why:
            key = "llm-rating" if w.startswith("rating") else w
            by_reason[key] = by_reason.get(key, 0) + 1
    return Audit(
        passed,
        reasons,
        ratings,
        {
            "screened": len(texts),
            "withheld": passed.count(False),
            "by_reason": by_reason,
            "max_rating": max_rating,
            "llm": model is not None,
        },
    )
