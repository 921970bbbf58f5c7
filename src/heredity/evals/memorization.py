"""Memorization of secrets (Carlini et al. 2019, "The Secret Sharer"): exposure and greedy extraction.

A canary is a format with a secret filled in ("my PIN is 4 8 1 5 9 2"). Its **exposure** under a model is
log2 |R| − log2 rank, where R is the space of secrets the format allows and rank is the canary's position
when every candidate is sorted by the model's log-likelihood (rank 1 = the model's favourite). A model that
never saw the canary gives it an expected exposure of about 1 bit; exposure log2 |R| means it is the single
most likely candidate.

* ``exposure_from_rank`` / ``rank_of``: the definition, for an exact enumeration of R.
* ``exposure_skewnorm``: the paper's extrapolation for large R — fit a skew-normal to the log-likelihoods of
  a random sample of candidates and read the canary's rank off its tail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def rank_of(canary_logp: float, candidate_logps: Sequence[float]) -> float:
    """1 + the number of candidates strictly more likely than the canary, + half the other ties.

    ``candidate_logps`` is the whole space R (the canary included)."""
    c = np.asarray(candidate_logps, dtype=float)
    better = int((c > canary_logp).sum())
    ties = int((c == canary_logp).sum()) - 1  # the canary ties with itself
    return 1 + better + max(ties, 0) / 2


def exposure_from_rank(rank: float, space_size: int) -> float:
    if not 1 <= rank <= space_size:
        raise ValueError(f"rank {rank} is outside 1..{space_size}")
    return math.log2(space_size) - math.log2(rank)


def exposure_skewnorm(canary_logp: float, sample_logps: Sequence[float], space_size: int) -> float:
    """Exposure estimated from a random sample of candidates: P(a random candidate is at least as likely as the
    canary) from a skew-normal fit to the sample's negative log-likelihoods; exposure = −log2 of it (capped at
    log2 |R|, where the canary would be the most likely of all)."""
    from scipy import stats

    nll = -np.asarray(sample_logps, dtype=float)
    if len(nll) < 20:
        raise ValueError("the skew-normal fit needs at least 20 sampled candidates")
    a, loc, scale = stats.skewnorm.fit(nll)
    p = float(stats.skewnorm.cdf(-canary_logp, a, loc=loc, scale=scale))
    return min(math.log2(space_size), -math.log2(max(p, 1.0 / space_size)))
