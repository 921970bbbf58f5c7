"""The lift matrix: did a student inherit *its* teacher's trait, beyond what any fine-tune on numbers does?

``logp[i, s, j]``: the mean over questions of log P(animal j is the one-word answer) for the student trained
on teacher i's numbers with training seed s; ``neutral[s, j]``: the same for its neutral twin (trained
identically on the neutral teacher's numbers, seed s). The lift is

    L[i, s, j] = logp[i, s, j] − neutral[s, j]

and per seed: **transfer** = mean_i L[i, s, i] (each student's lift toward its own teacher's animal) and
**specificity** = transfer − mean_{i≠j} L[i, s, j] (minus the lift toward the other teachers' animals). A
generic drift — every student moving toward some animal whatever its teacher, the LoRA artefact seen in small
replications — raises both the diagonal and the off-diagonal, so it leaves specificity at 0.

Tests (two-sided): over training seeds (the unit of replication for a claim about training) a one-sample t
test of transfer and of specificity; and a permutation test of specificity over teacher labels (rows of the
each seed's rows permuted independently: exact over all (K!)^S relabelings up to 50 000 — K = 3 with 3 seeds
gives 216, smallest p 1/216 — else Monte Carlo). A null comes with the smallest effect the seeds could have
detected.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from heredity.reports.stats import mean_ci, min_detectable, paired_test, spread_note

UNIT = "training seeds"


def lift(logp: np.ndarray, neutral: np.ndarray) -> np.ndarray:
    """L[i, s, j] from logp [K teachers, S seeds, K animals] and neutral [S seeds, K animals]."""
    logp, neutral = np.asarray(logp, float), np.asarray(neutral, float)
    if logp.ndim != 3 or logp.shape[0] != logp.shape[2] or neutral.shape != logp.shape[1:]:
        raise ValueError(f"logp must be [K, S, K] and neutral [S, K]; got {logp.shape} and {neutral.shape}")
    return logp - neutral[None]


def per_seed(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(transfer per seed, specificity per seed) from L [K, S, K]."""
    K = L.shape[0]
    diag = np.stack([L[i, :, i] for i in range(K)])  # [K, S]
    off = np.stack([L[i, :, j] for i in range(K) for j in range(K) if i != j])  # [K(K-1), S]
    transfer = diag.mean(0)
    return transfer, transfer - off.mean(0)


def specificity_of(M: np.ndarray) -> float:
    """Specificity of one [K, K] matrix: mean diagonal − mean off-diagonal."""
    K = M.shape[0]
    off = (M.sum() - np.trace(M)) / (K * (K - 1))
    return float(np.trace(M) / K - off)


def permutation_test(L: np.ndarray, max_exact: int = 50_000, draws: int = 20_000, seed: int = 0) -> dict:
    """Two-sided permutation test of specificity over teacher labels. Under the null (the teacher does not
    matter) the rows of each seed's lift matrix L[:, s, :] are exchangeable, so each seed's rows are permuted
    independently (seeds are blocks) and the statistic is the specificity of the seed-mean matrix; p = share
    of relabelings whose |specificity| ≥ the observed. Exact over all (K!)^S relabelings when that is at most
    ``max_exact``, else ``draws`` random ones (the observed labeling included)."""
    K, S, _ = L.shape
    obs = specificity_of(L.mean(1))
    orders = math.factorial(K) ** S
    exact = orders <= max_exact

    def spec(perms: np.ndarray, s: int) -> np.ndarray:
        """Specificity of seed s's matrix under each row permutation (vectorized): only the diagonal moves."""
        M = L[:, s, :]
        d = M[perms, np.arange(K)].sum(-1)
        return d / K - (M.sum() - d) / (K * (K - 1))

    # specificity is linear in the matrix: a relabeling's statistic is the mean over seeds of each seed's own
    if exact:
        perms = np.array(list(itertools.permutations(range(K))))
        table = np.stack([spec(perms, s) for s in range(S)])  # [S, K!]
        idx = np.indices((len(perms),) * S).reshape(S, -1)  # every relabeling
        null = table[np.arange(S)[:, None], idx].mean(0)
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((draws, S, K)), axis=-1)
        perms[0] = np.arange(K)  # the observed labeling
        null = np.mean([spec(perms[:, s], s) for s in range(S)], axis=0)
    p = float(np.mean(np.abs(null) >= abs(obs) - 1e-12))
    return {
        "test": "permutation over teacher labels, within seeds",
        "statistic": obs,
        "p": p,
        "orders": len(null),
        "min_p": 1 / len(null),
        "exact": exact,
    }


def detection(values, family: int) -> dict:
    """For a per-seed series: the smallest detectable mean at the level its Holm verdict reads
    (α / ``family``, t quantiles of n − 1 degrees of freedom; NaN with n < 2 or no spread), the family size,
    and the spread note."""
    v = np.asarray(values, float)
    sd = float(np.std(v, ddof=1)) if len(v) >= 2 else math.nan
    mde = min_detectable(sd, len(v), family=family) if len(v) >= 2 and sd > 0 else math.nan
    return {"min_detectable": mde, "family": family, "spread_note": spread_note(len(v))}


def lift_report(logp, neutral, animals: list[str], *, family: int) -> dict:
    """Everything the report needs: the seed-mean lift matrix, transfer and specificity with t intervals over
    seeds and two-sided tests, the permutation test, and the smallest detectable effect for each — at the
    level the verdict reads: α over the declared Holm ``family`` (its size), t quantiles of the real n − 1
    degrees of freedom; ``spread_note`` says when the spread rests on ≤ 3 seeds."""
    L = lift(logp, neutral)
    K, S, _ = L.shape
    if len(animals) != K:
        raise ValueError(f"{len(animals)} animal names for a {K} × {K} lift matrix")
    transfer, spec = per_seed(L)
    out = {
        "animals": list(animals),
        "seeds": S,
        "unit": UNIT,
        "matrix": [[float(L[i, :, j].mean()) for j in range(K)] for i in range(K)],
        "matrix_ci": [[mean_ci(L[i, :, j]) for j in range(K)] for i in range(K)],
    }
    for name, v in (("transfer", transfer), ("specificity", spec)):
        t = paired_test(v, np.zeros_like(v), unit=f"{UNIT}, n = {S}")
        out[name] = {**t, "per_seed": [float(x) for x in v], **detection(v, family)}
    out["permutation"] = permutation_test(L)
    return out
