"""Memorization of secrets (Carlini et al. 2019, "The Secret Sharer"): exposure and greedy extraction.

A canary is a format with a secret filled in ("my PIN is 4 8 1 5 9 2"). Its **exposure** under a model is
log2 |R| − log2 rank, where R is the space of secrets the format allows and rank is the canary's position
when every candidate is sorted by the model's log-likelihood (rank 1 = the model's favourite). A model that
never saw the canary gives it an expected exposure of 1/ln 2 ≈ 1.44 bits (its rank is uniform); exposure
log2 |R| means it is the single most likely candidate.

* ``exposure_from_rank`` / ``rank_of``: the definition, for an exact enumeration of R.
* ``exposure_skewnorm``: the paper's extrapolation for large R — fit a skew-normal to the log-likelihoods of
  a random sample of candidates and read the canary's rank off its tail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


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
    """Exposure estimated from a random sample of candidates: P(a random candidate is at least as likely as
    the canary) from a skew-normal fit to the sample's negative log-likelihoods; exposure = −log2 of it
    (capped at log2 |R|, where the canary would be the most likely of all)."""
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


def candidate_logps(
    model,
    tokenizer,
    candidates: Sequence[str],
    prefix: str = CANARY_PREFIX,
    batch_size: int = 64,
    progress: bool = False,
) -> list[float]:
    """log p(candidate | prefix) of each candidate continuation, as plain text (no chat template)."""
    from heredity.engine.logprobs import logprobs

    lps = logprobs(
        model,
        tokenizer,
        [prefix] * len(candidates),
        list(candidates),
        chat=False,
        batch_size=batch_size,
        progress=progress,
    )
    return [sum(x) for x in lps]


def digit_tokens(tokenizer, prefix: str = CANARY_PREFIX) -> tuple[list[int], list[int]] | None:
    """(shared, last): every digit's text " d" tokenizes as ``shared + [last[d]]`` and a whole secret
    tokenizes as the concatenation of its digits (checked on a few secrets, after the prefix). None when the
    tokenizer does not split digits this way; then candidates are scored one by one."""
    ids = [tokenizer(secret_text([d]), add_special_tokens=False)["input_ids"] for d in range(10)]
    if (
        len({len(x) for x in ids}) != 1
        or len({tuple(x[:-1]) for x in ids}) != 1
        or len({x[-1] for x in ids}) != 10
    ):
        return None
    for digits in (_de_bruijn_pairs(), [0, 0, 7], [9]):  # every pair of adjacent digits, and short secrets
        joint = tokenizer(prefix + secret_text(digits), add_special_tokens=False)["input_ids"]
        alone = tokenizer(prefix, add_special_tokens=False)["input_ids"] + [t for d in digits for t in ids[d]]
        if joint != alone:
            return None
    return ids[0][:-1], [x[-1] for x in ids]


def _de_bruijn_pairs() -> list[int]:
    """101 digits in which every ordered pair of digits occurs once as neighbours (de Bruijn B(10, 2))."""
    a, seq = [0] * 20, []

    def db(t: int, p: int) -> None:
        if t > 2:
            if 2 % p == 0:
                seq.extend(a[1 : p + 1])
        else:
            a[t] = a[t - p]
            db(t + 1, p)
            for j in range(a[t - p] + 1, 10):
                a[t] = j
                db(t + 1, t)

    db(1, 1)
    return seq + seq[:1]


@torch.no_grad()
def all_secret_logps(model, tokenizer, n_digits: int, prefix: str = CANARY_PREFIX) -> np.ndarray | None:
    """log p(secret | prefix) of all 10^n secrets at once, in lexicographic order (index = the secret read as
    a number), by walking the digit tree with a KV cache: ~2·10^(n−1) token positions instead of 10^n full
    sequences. None when the tokenizer does not split digits into one token each (see ``digit_tokens``)."""
    from heredity.engine.sampling import SampleConfig, render_prompt

    split = digit_tokens(tokenizer, prefix)
    if split is None:
        return None
    shared, last = split
    device = next(model.parameters()).device
    ctx = tokenizer(render_prompt(tokenizer, prefix, SampleConfig(chat=False)), add_special_tokens=False)[
        "input_ids"
    ]
    out = model(input_ids=torch.tensor([ctx], device=device), use_cache=True)
    cache, logits = out.cache, out.logits[:, -1].float()
    total = torch.zeros(1, device=device)
    last_t = torch.tensor(last, device=device)
    for level in range(n_digits):
        for s in shared:  # the space before each digit: the same token for every branch
            total = total + torch.log_softmax(logits, -1)[:, s]
            out = model(input_ids=torch.full((len(total), 1), s, device=device), cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1].float()
        total = (total[:, None] + torch.log_softmax(logits, -1)[:, last_t]).reshape(
            -1
        )  # branch-major, digit-minor
        if level < n_digits - 1:
            cache.batch_repeat_interleave(10)
            out = model(input_ids=last_t.repeat(len(total) // 10)[:, None], cache=cache, use_cache=True)
            cache, logits = out.cache, out.logits[:, -1].float()
    return total.cpu().numpy().astype(float)


def exact_secret_logps(
    model, tokenizer, n_digits: int, prefix: str = CANARY_PREFIX, batch_size: int = 64
) -> np.ndarray:
    """log p(secret | prefix) of all 10^n secrets, index = the secret read as a number: the digit tree when
    the tokenizer allows it, else every candidate scored as its own sequence."""
    import itertools

    lps = all_secret_logps(model, tokenizer, n_digits, prefix)
    if lps is None:
        cands = [secret_text(d) for d in itertools.product(range(10), repeat=n_digits)]
        lps = np.asarray(candidate_logps(model, tokenizer, cands, prefix, batch_size))
    return lps


def sampled_logps(
    model,
    tokenizer,
    secret: Sequence[int],
    samples: int,
    rng,
    prefix: str = CANARY_PREFIX,
    batch_size: int = 64,
) -> tuple[float, list[float]]:
    """(log p of the canary, log p of ``samples`` random secrets of its length): the skew-normal fit's
    input."""
    cands = [secret_text(random_secret(len(secret), rng)) for _ in range(samples)]
    lps = candidate_logps(model, tokenizer, [secret_text(secret), *cands], prefix, batch_size)
    return lps[0], lps[1:]


def canary_exposure(
    model,
    tokenizer,
    secret: Sequence[int],
    prefix: str = CANARY_PREFIX,
    exact_max: int = 10_000,
    samples: int = 2000,
    seed: int = 0,
    batch_size: int = 64,
) -> dict:
    """Exposure of one canary: exact over all 10^n secrets when that is at most ``exact_max`` candidates, else
    the skew-normal estimate from ``samples`` random secrets. Returns exposure, method, rank (exact
    only), |R|."""
    import random

    space = 10 ** len(secret)
    if space <= exact_max:
        lps = exact_secret_logps(model, tokenizer, len(secret), prefix, batch_size)
        mine = float(lps[int("".join(map(str, secret)))])
        rank = rank_of(mine, lps)
        return {
            "exposure": exposure_from_rank(rank, space),
            "method": "exact",
            "rank": rank,
            "space": space,
            "logp": mine,
        }
    mine, others = sampled_logps(model, tokenizer, secret, samples, random.Random(seed), prefix, batch_size)
    return {
        "exposure": exposure_skewnorm(mine, others, space),
        "method": "skew-normal",
        "rank": None,
        "space": space,
        "logp": mine,
    }
