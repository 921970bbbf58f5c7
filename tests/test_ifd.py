"""Instruction-following difficulty (IFD, Superfiltering's selection score) on constructed cases with known
answers, and through a scorer model against a computation by hand."""

from __future__ import annotations

import math

import pytest

from heredity.engine.logprobs import ifd, ifd_scores, logprobs


def test_ifd_is_the_ratio_of_perplexities():
    # the perplexity ratio exp(loss_c - loss_u): the instruction lowers the mean loss by 1 nat: e^-1; it
    # changes nothing: 1; it misleads by 2 nats: e^2; two rows with the same loss ratio rank by the difference
    assert ifd([-1.0, -1.0], [-2.0, -2.0]) == pytest.approx(math.exp(-1))
    assert ifd([-0.5, -1.5], [-1.0, -1.0]) == pytest.approx(1.0)
    assert ifd([-3.0], [-1.0]) == pytest.approx(math.exp(2))
    assert ifd([-0.9], [-1.0]) > ifd([-4.5], [-5.0])  # 0.905 vs 0.61, though both losses fall by 10%
    with pytest.raises(ValueError, match="same answer tokens"):
        ifd([-1.0], [-1.0, -2.0])


def test_ifd_scores_by_a_model_equal_the_hand_computation(tmp_path):
    from conftest import stored_tiny

    from heredity.models import load
    from heredity.store import Store

    store = Store(tmp_path)
    model, tok = load(stored_tiny(store, "scorer"), store)
    prompts, answers = ["Say hello.", "Count to three."], ["hello", "one two three"]
    got = ifd_scores(model, tok, prompts, answers)
    c = logprobs(model, tok, prompts, answers, chat=True)
    u = logprobs(model, tok, ["", ""], answers, chat=True)
    want = [math.exp(sum(b) / len(b) - sum(a) / len(a)) for a, b in zip(c, u, strict=True)]
    assert got == pytest.approx(want)
