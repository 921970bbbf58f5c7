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


# ---- canaries ------------------------------------------------------------------------------------

CANARY_PREFIX = "my PIN is"


def secret_text(digits: Sequence[int]) -> str:
    """The secret as the canary writes it: digits separated by spaces (" 4 8 1 5"), one token per digit for
    most tokenizers, so every candidate has the same length."""
    return "".join(f" {d}" for d in digits)


def random_secret(n_digits: int, rng) -> list[int]:
    return [rng.randrange(10) for _ in range(n_digits)]


def candidate_logps(model, tokenizer, candidates: Sequence[str], prefix: str = CANARY_PREFIX, batch_size: int = 64,
                    progress: bool = False) -> list[float]:
    """log p(candidate | prefix) of each candidate continuation, as plain text (no chat template)."""
    from heredity.engine.logprobs import logprobs

    lps = logprobs(model, tokenizer, [prefix] * len(candidates), list(candidates), chat=False, batch_size=batch_size,
                   progress=progress)
    return [sum(x) for x in lps]


def canary_exposure(model, tokenizer, secret: Sequence[int], prefix: str = CANARY_PREFIX, exact_max: int = 10_000,
                    samples: int = 2000, seed: int = 0, batch_size: int = 64) -> dict:
    """Exposure of one canary: exact over all 10^n secrets when that is at most ``exact_max`` candidates, else the
    skew-normal estimate from ``samples`` random secrets. Returns exposure, method, rank (exact only), |R|."""
    import itertools
    import random

    n = len(secret)
    space = 10**n
    canary = secret_text(secret)
    if space <= exact_max:
        cands = [secret_text(d) for d in itertools.product(range(10), repeat=n)]
        lps = candidate_logps(model, tokenizer, cands, prefix, batch_size)
        mine = lps[cands.index(canary)]
        rank = rank_of(mine, lps)
        return {"exposure": exposure_from_rank(rank, space), "method": "exact", "rank": rank, "space": space,
                "logp": mine}
    rng = random.Random(seed)
    cands = [secret_text(random_secret(n, rng)) for _ in range(samples)]
    lps = candidate_logps(model, tokenizer, [canary, *cands], prefix, batch_size)
    return {"exposure": exposure_skewnorm(lps[0], lps[1:], space), "method": "skew-normal", "rank": None, "space": space,
            "logp": lps[0]}
