"""Diversity of generated text, for model collapse: distinct n-grams and the tail of the token
distribution."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence


def distinct_n(docs: Iterable[Sequence], n: int) -> float:
    """Unique n-grams ÷ all n-grams over token (or word) sequences; 0 when there are none."""
    seen: set[tuple] = set()
    total = 0
    for d in docs:
        grams = [tuple(d[i : i + n]) for i in range(len(d) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def tail_stats(tokens: Iterable, reference: Counter | None = None, tail_fraction: float = 0.5) -> dict:
    """How much of a distribution's tail survives.

    ``types``: distinct tokens; ``entropy`` (bits) of the unigram distribution; with a ``reference`` count
    (e.g. the real data), ``tail_types`` = reference types outside its most frequent ``1 − tail_fraction`` of
    mass, and ``tail_coverage`` = the share of those that still occur."""
    counts = Counter(tokens)
    total = sum(counts.values())
    out = {
        "types": len(counts),
        "tokens": total,
        "entropy": -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0,
    }
    if reference is not None:
        ref_total = sum(reference.values())
        cum, tail = 0, []
        for tok, c in reference.most_common():
            if cum >= (1 - tail_fraction) * ref_total:
                tail.append(tok)
            cum += c
        out["tail_types"] = len(tail)
        out["tail_coverage"] = sum(1 for t in tail if t in counts) / len(tail) if tail else None
    return out
