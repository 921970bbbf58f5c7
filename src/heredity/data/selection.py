"""Selection rules for instruction data (the arms of ``data-quality``): which N of a pool of scored
(instruction, answer) rows a model is trained on.

Each rule is one function of the pool and N that returns the chosen rows, and says exactly what it picks:

* ``random``: N rows uniformly, without replacement (seeded) — the baseline every rule is measured against.
* ``longest``: the N longest answers (characters), ties by the pool order — *Long Is More for Alignment*
  (Zhao et al., ICML 2024).
* ``ifd``: the N highest instruction-following difficulties below 1 — Superfiltering (Li et al., arXiv
  2402.00530), whose IFD comes from a small scorer (``engine.logprobs.ifd_scores``); a row with IFD ≥ 1 (the
  instruction does not help predict the answer) or an undefined one is never chosen.
* ``reward``: the N highest scores of a judge (AlpaGasus' rule, here a reward model's score).
* ``verified``: N rows drawn at random among those whose answer is verified right (``verified`` true: correct
  against its reference and/or strictly following its constraints, ``data.pool``).
* ``noisy``: quality vs quantity — ``n`` rows of which ``wrong_share`` are verified wrong and the rest
  verified right, each part drawn at random (``noisy(pool, 3 * N, share)`` against ``verified(pool, N)``).

A rule that cannot fill N from the pool is a one-line error naming what it found, never a smaller set.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from heredity.errors import HeredityError

RULES = ("random", "longest", "ifd", "reward", "verified")


def _need(rows: Sequence[dict], n: int, what: str) -> None:
    if n < 1:
        raise HeredityError(f"a selection needs N ≥ 1, got {n}")
    if len(rows) < n:
        raise HeredityError(
            f"{what}: the pool holds {len(rows)} eligible rows and N is {n}; lower N or grow the pool"
        )


def select(pool: Sequence[dict], rule: str, n: int, seed: int = 0) -> list[dict]:
    """The ``n`` rows of ``pool`` that ``rule`` picks (see the module docstring), in the pool's order."""
    if rule not in RULES:
        raise HeredityError(f"unknown selection rule {rule!r}; choose from {', '.join(RULES)}")
    index = list(range(len(pool)))
    if rule == "random":
        _need(index, n, "random")
        chosen = random.Random(seed).sample(index, n)
    elif rule == "longest":
        _need(index, n, "longest")
        chosen = sorted(index, key=lambda i: (-len(pool[i]["completion"]), i))[:n]
    elif rule == "ifd":
        ok = [i for i in index if _finite(pool[i].get("ifd")) and pool[i]["ifd"] < 1]
        _need(ok, n, "ifd (IFD below 1)")
        chosen = sorted(ok, key=lambda i: (-pool[i]["ifd"], i))[:n]
    elif rule == "reward":
        ok = [i for i in index if _finite(pool[i].get("reward"))]
        _need(ok, n, "reward (scored rows)")
        chosen = sorted(ok, key=lambda i: (-pool[i]["reward"], i))[:n]
    else:
        ok = [i for i in index if pool[i].get("verified") is True]
        _need(ok, n, "verified (verified-right rows)")
        chosen = random.Random(seed).sample(ok, n)
    return [pool[i] for i in sorted(chosen)]


def noisy(pool: Sequence[dict], n: int, wrong_share: float, seed: int = 0) -> list[dict]:
    """``n`` rows, ``round(wrong_share * n)`` of them verified wrong (``verified`` false) and the rest
    verified right, each part drawn at random; in the pool's order."""
    if not 0 <= wrong_share <= 1:
        raise HeredityError(f"wrong_share must lie in [0, 1], got {wrong_share}")
    k = round(wrong_share * n)
    wrong = [i for i, r in enumerate(pool) if r.get("verified") is False]
    right = [i for i, r in enumerate(pool) if r.get("verified") is True]
    if n < 1:
        raise HeredityError(f"a selection needs N ≥ 1, got {n}")
    for part, count, what in ((wrong, k, "wrong"), (right, n - k, "correct")):
        if count:
            _need(part, count, f"noisy ({count} {what} rows)")
    rng = random.Random(seed)
    chosen = rng.sample(wrong, k) + rng.sample(right, n - k)
    return [pool[i] for i in sorted(chosen)]


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
