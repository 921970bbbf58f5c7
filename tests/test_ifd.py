"""Instruction-following difficulty (IFD, Superfiltering's selection score) on constructed cases with known
answers, and through a scorer model against a computation by hand."""

from __future__ import annotations

import math

import pytest

from heredity.engine.logprobs import ifd, ifd_scores, logprobs


def test_ifd_is_the_ratio_of_mean_losses():
    # the instruction halves the answer's loss: IFD 0.5; it changes nothing: 1; it misleads: above 1
    assert ifd([-1.0, -1.0], [-2.0, -2.0]) == pytest.approx(0.5)
    assert ifd([-0.5, -1.5], [-1.0, -1.0]) == pytest.approx(1.0)
    assert ifd([-3.0], [-1.0]) == pytest.approx(3.0)
    assert math.isnan(ifd([0.0], [0.0]))  # an answer the scorer is certain of either way: undefined
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
    want = [(sum(a) / len(a)) / (sum(b) / len(b)) for a, b in zip(c, u, strict=True)]
    assert got == pytest.approx(want)
