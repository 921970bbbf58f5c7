"""Exposure (The Secret Sharer) on constructed rankings whose answer is known."""

import math

import numpy as np
import pytest

from heredity.evals.memorization import exposure_from_rank, exposure_skewnorm, rank_of


def test_exposure_on_a_known_ranking():
    space = [float(x) for x in range(1000)]  # log-likelihoods of all 1000 candidates; 999 is the favourite
    assert rank_of(999.0, space) == 1 and exposure_from_rank(1, 1000) == pytest.approx(math.log2(1000))
    assert rank_of(499.0, space) == 501  # 500 candidates are more likely
    assert exposure_from_rank(rank_of(499.0, space), 1000) == pytest.approx(math.log2(1000 / 501))
    assert exposure_from_rank(rank_of(0.0, space), 1000) == pytest.approx(0.0)  # the least likely of all
    assert rank_of(5.0, [5.0, 5.0, 5.0, 1.0]) == 2  # two other ties count half each
    with pytest.raises(ValueError):
        exposure_from_rank(0, 10)


def test_skew_normal_extrapolation_recovers_a_known_tail():
    from scipy import stats

    rng = np.random.default_rng(0)
    nll = stats.skewnorm.rvs(
        4, loc=40, scale=6, size=4000, random_state=rng
    )  # a skewed population of candidates
    for q in (1e-2, 1e-4):  # a canary as likely as the top q of the population
        canary_nll = stats.skewnorm.ppf(q, 4, loc=40, scale=6)
        est = exposure_skewnorm(-canary_nll, -nll, space_size=10**6)
        assert est == pytest.approx(-math.log2(q), abs=0.6), (q, est)
    assert exposure_skewnorm(-0.0, -nll, space_size=10**6) == pytest.approx(
        math.log2(10**6)
    )  # capped at log2|R|
    with pytest.raises(ValueError, match="at least 20"):
        exposure_skewnorm(-1.0, [-1.0] * 5, 100)


def test_a_memorized_canary_is_exposed_and_an_unseen_one_is_not(store):
    """A tiny model fine-tuned on text holding one canary 40 times ranks it first among all 100 two-digit
    secrets (exposure log2 100); a secret it never saw gets a low exposure."""
    import random

    from heredity.data import put_rows
    from heredity.engine import FinetuneConfig, finetune
    from heredity.evals.memorization import CANARY_PREFIX, canary_exposure, secret_text
    from heredity.models import load

    rng = random.Random(0)
    filler = [
        {
            "text": " ".join(
                rng.choice(["the", "cat", "sat", "on", "a", "mat", "and", "ran"]) for _ in range(12)
            )
        }
        for _ in range(80)
    ]
    rows = filler + [{"text": CANARY_PREFIX + secret_text([3, 7])}] * 40
    rng.shuffle(rows)
    data = put_rows(store, rows, "canary-corpus")
    res = finetune(
        store,
        "tiny:micro",
        data,
        FinetuneConfig(method="full", loss="full_sequence", lr=3e-3, epochs=15, batch_size=8, max_length=64),
        progress=False,
    )
    model, tok = load(res["model"], store)
    seen = canary_exposure(model, tok, [3, 7])
    unseen = canary_exposure(model, tok, [8, 1])
    assert seen["method"] == "exact" and seen["space"] == 100
    assert seen["rank"] == 1 and seen["exposure"] == pytest.approx(math.log2(100))
    assert unseen["exposure"] < 3, unseen
    # the skew-normal path (|R| above exact_max), from 60 random secrets: it too puts
    # the seen canary far above
    seen_sk = canary_exposure(model, tok, [3, 7], exact_max=10, samples=60)
    unseen_sk = canary_exposure(model, tok, [8, 1], exact_max=10, samples=60)
    assert seen_sk["method"] == "skew-normal" and seen_sk["rank"] is None
    assert seen_sk["exposure"] > unseen_sk["exposure"] + 2, (seen_sk, unseen_sk)


def test_digit_tree_scores_every_secret_as_enumeration_does(tiny):
    """The KV-cached digit tree gives each of the 1000 three-digit secrets the log-likelihood that scoring it
    as its own sequence gives; a tokenizer that does not split digits one per token is refused (None)."""
    import itertools

    from heredity.evals.memorization import all_secret_logps, candidate_logps, digit_tokens, secret_text

    _, _, model, tok = tiny
    tree = all_secret_logps(model, tok, 3, "Vobi's PIN is")
    one_by_one = candidate_logps(
        model, tok, [secret_text(d) for d in itertools.product(range(10), repeat=3)], "Vobi's PIN is"
    )
    assert tree.shape == (1000,) and np.abs(tree - np.array(one_by_one)).max() < 1e-4

    class Merged:  # a tokenizer with one token for "12": digits are not one token each
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(ch) for ch in text.replace(" 1 2", "\x01")]}

    assert digit_tokens(Merged(), "x") is None
