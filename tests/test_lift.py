"""The lift-matrix statistic and its tests on constructed inputs with known answers."""

import numpy as np
import pytest

from heredity.evals.lift import lift, lift_report, per_seed, permutation_test, specificity_of


def _make(K=4, S=5, diag=0.0, drift=0.0, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    neutral = rng.normal(-5, 1, (S, K))
    logp = neutral[None] + drift + rng.normal(0, noise, (K, S, K))
    for i in range(K):
        logp[i, :, i] += diag
    return logp, neutral


def test_lift_is_student_minus_its_neutral_twin():
    logp = np.array([[[1.0, 2.0]], [[3.0, 5.0]]])  # K = 2 teachers, S = 1 seed, K = 2 animals
    neutral = np.array([[0.5, 1.0]])
    L = lift(logp, neutral)
    assert L.tolist() == [[[0.5, 1.0]], [[2.5, 4.0]]]
    transfer, spec = per_seed(L)
    assert transfer.tolist() == [(0.5 + 4.0) / 2] and spec.tolist() == [(0.5 + 4.0) / 2 - (1.0 + 2.5) / 2]
    with pytest.raises(ValueError, match="must be"):
        lift(logp[:, :, :1], neutral)


def test_an_effect_on_the_diagonal_is_found():
    logp, neutral = _make(diag=0.3)
    r = lift_report(logp, neutral, ["owl", "cat", "dog", "fox"], family=1)
    assert r["transfer"]["diff"] == pytest.approx(0.3, abs=0.05) and r["transfer"]["p"] < 1e-3
    assert r["specificity"]["diff"] == pytest.approx(0.3, abs=0.05) and r["specificity"]["p"] < 1e-3
    assert r["specificity"]["direction"] == "higher" and r["unit"] == "training seeds"
    # 24^5 relabelings within seeds: sampled; only relabelings as extreme as the observed one reach it
    assert r["permutation"]["p"] < 1e-3 and not r["permutation"]["exact"]
    assert r["matrix"][0][0] == pytest.approx(0.3, abs=0.1) and abs(r["matrix"][0][1]) < 0.1


def test_a_common_drift_alone_is_not_specific():
    """Every student moves toward every animal (generic LoRA drift): transfer looks
    positive, specificity is 0."""
    logp, neutral = _make(diag=0.0, drift=0.5)
    r = lift_report(logp, neutral, list("abcd"), family=1)
    assert r["transfer"]["diff"] == pytest.approx(0.5, abs=0.05) and r["transfer"]["p"] < 1e-3
    assert abs(r["specificity"]["diff"]) < 0.05 and r["specificity"]["p"] > 0.05
    assert r["specificity"]["min_detectable"] > 0  # a null says what it could have seen
    # ... at the level its verdict reads: over a Holm family of 8 it is larger
    assert (
        lift_report(logp, neutral, list("abcd"), family=8)["specificity"]["min_detectable"]
        > r["specificity"]["min_detectable"]
    )


def test_both_tests_hold_their_level_under_drift_alone():
    """50 datasets with drift and no specific effect: each test rejects at 0.05 about 5%
    of the time, not more."""
    t_rej = p_rej = 0
    for k in range(50):
        logp, neutral = _make(drift=0.5, seed=100 + k)
        r = lift_report(logp, neutral, list("abcd"), family=1)
        t_rej += r["specificity"]["p"] < 0.05
        p_rej += r["permutation"]["p"] < 0.05
    assert t_rej <= 8 and p_rej <= 8, (t_rej, p_rej)


def test_a_drift_toward_one_animal_is_not_transfer():
    """One animal rises in every student whatever the teacher (the replication's 7-of-8 adapters)."""
    logp, neutral = _make(K=3)
    logp[:, :, 1] += 0.8
    r = lift_report(logp, neutral, list("abc"), family=1)
    assert abs(r["specificity"]["diff"]) < 0.1 and r["specificity"]["p"] > 0.05


def test_permutation_is_exact_for_small_k_and_sampled_beyond():
    M = np.diag([1.0, 1.0, 1.0])
    assert specificity_of(M) == pytest.approx(1.0)
    assert permutation_test(M[:, None, :])["orders"] == 6
    r = permutation_test(np.repeat(M[:, None, :], 3, axis=1))  # 3 seeds: 6^3 relabelings within seeds
    assert r["exact"] and r["orders"] == 216 and r["p"] == pytest.approx(1 / 216)
    big = np.eye(9)[:, None, :]
    r = permutation_test(big, draws=2000)
    assert not r["exact"] and r["orders"] == 2000 and r["p"] < 0.01


def test_the_within_seed_permutation_matches_brute_force():
    """The vectorized statistic equals relabeling each seed's rows and recomputing the
    seed-mean specificity."""
    import itertools

    rng = np.random.default_rng(3)
    L = rng.normal(0, 1, (3, 2, 3))
    perms = list(itertools.permutations(range(3)))
    obs = specificity_of(L.mean(1))
    null = [specificity_of((L[list(a), 0, :] + L[list(b), 1, :]) / 2) for a in perms for b in perms]
    want = np.mean(np.abs(null) >= abs(obs) - 1e-12)
    assert permutation_test(L)["p"] == pytest.approx(want)
