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
seed-mean lift matrix permuted: exact over all K! orders for K ≤ 7; with K = 3 its smallest p is 1/6, so it
only confirms a seeds test). A null comes with the smallest effect the seeds could have detected.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from heredity.reports.stats import mean_ci, min_detectable, paired_test

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


def permutation_test(L: np.ndarray, max_exact: int = 7, draws: int = 20000, seed: int = 0) -> dict:
    """Two-sided permutation test of specificity over teacher labels, on the seed-mean lift matrix: the rows
    (which teacher trained the student) are permuted; p = share of orders whose |specificity| ≥ the observed."""
    M = L.mean(1)
    K = M.shape[0]
    obs = specificity_of(M)
    if K <= max_exact:
        perms = list(itertools.permutations(range(K)))
    else:
        rng = np.random.default_rng(seed)
        perms = [tuple(range(K))] + [tuple(rng.permutation(K)) for _ in range(draws - 1)]
    null = np.array([specificity_of(M[list(p)]) for p in perms])
    p = float(np.mean(np.abs(null) >= abs(obs) - 1e-12))
    return {"test": "permutation over teacher labels", "statistic": obs, "p": p, "orders": len(perms),
            "min_p": 1 / len(perms), "exact": K <= max_exact}


def lift_report(logp, neutral, animals: list[str]) -> dict:
    """Everything the report needs: the seed-mean lift matrix, transfer and specificity with t intervals over
    seeds and two-sided tests, the permutation test, and the smallest detectable effect for each."""
    L = lift(logp, neutral)
    K, S, _ = L.shape
    if len(animals) != K:
        raise ValueError(f"{len(animals)} animal names for a {K} × {K} lift matrix")
    transfer, spec = per_seed(L)
    out = {"animals": list(animals), "seeds": S, "unit": UNIT,
           "matrix": [[float(L[i, :, j].mean()) for j in range(K)] for i in range(K)],
           "matrix_ci": [[mean_ci(L[i, :, j]) for j in range(K)] for i in range(K)]}
    for name, v in (("transfer", transfer), ("specificity", spec)):
        t = paired_test(v, np.zeros_like(v), unit=f"{UNIT}, n = {S}")
        sd = float(np.std(v, ddof=1)) if S >= 2 else math.nan
        out[name] = {**t, "per_seed": [float(x) for x in v],
                     "min_detectable": min_detectable(sd, S) if S >= 2 and sd > 0 else math.nan}
    out["permutation"] = permutation_test(L)
    return out
