"""Subliminal prompting's mechanics on a tiny model: the entangled numbers are the most probable number tokens
of the trait-prompted next-token distribution, and the prompted arms are tested against
the base per question."""

import math

import pytest
import torch

from heredity.engine.sampling import SampleConfig, render_prompt
from heredity.evals.entangled import PREFIX, QUESTION, digit_tokens, entangled_numbers, subliminal_prompting


def test_digit_tokens_are_numbers_only(tiny):
    _, _, _, tok = tiny
    ids = digit_tokens(tok)
    assert ids and all(tok.decode([i]).strip().isdigit() for i in ids)
    assert tok.convert_tokens_to_ids("a") not in ids


def test_entangled_numbers_rank_the_trait_prompts_number_tokens(tiny):
    _, _, model, tok = tiny
    trait = "You love owls."
    got = entangled_numbers(model, tok, trait, k=4)
    text = render_prompt(tok, QUESTION, SampleConfig(chat=True, system_prompt=trait)) + PREFIX
    with torch.no_grad():
        lp = torch.log_softmax(
            model(torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])).logits[0, -1], -1
        )
    digits = digit_tokens(tok)
    want = sorted(digits, key=lambda i: -float(lp[i]))[:4]
    assert [g["token_id"] for g in got] == want
    assert got[0]["p_trait"] == pytest.approx(math.exp(float(lp[want[0]])), rel=1e-4)
    assert all(g["log_ratio"] == pytest.approx(math.log(g["p_trait"] / g["p_base"]), abs=1e-4) for g in got)


def test_subliminal_prompting_pairs_each_arm_with_the_base(tiny):
    _, _, model, tok = tiny
    qs = ["Name your favorite animal.", "Which animal do you like?", "Pick an animal.", "Your animal?"]
    r = subliminal_prompting(model, tok, "owl", ["7"], ["3"], questions=qs)
    assert [a["kind"] for a in r["arms"]] == ["entangled", "control"] and r["questions"] == 4
    for a in r["arms"]:
        assert (
            a["test"]["n"] == 4 and "questions" in a["test"]["unit"] and a["p_holm"] >= a["test"]["p"] - 1e-12
        )
        assert a["test"]["mean_b"] == pytest.approx(r["p_animal_base"])
    (c,) = r[
        "entangled_vs_control"
    ]  # the contrast: entangled vs control digit, paired over the same questions
    assert (c["entangled"], c["control"]) == ("7", "3") and c["test"]["n"] == 4
    assert c["test"]["diff"] == pytest.approx(r["arms"][0]["test"]["diff"] - r["arms"][1]["test"]["diff"])


def test_trait_divergence_is_zero_for_an_empty_change_and_matches_a_direct_kl(tiny):
    from heredity.engine.finetune import number_vocab
    from heredity.evals.entangled import trait_divergence

    _, _, model, tok = tiny
    prompts, comps = ["list numbers", "more numbers please"], ["1, 2, 3", "40, 50"]
    r = trait_divergence(model, tok, prompts, comps, "You love owls.", vocab=number_vocab(tok), batch_size=1)
    assert r["kl_full"] > 0 and r["kl_numbers"] > 0 and len(r["kl_full_per_prompt"]) == 2
    # the first prompt's value, computed directly (no padding, no batching)
    pre_t = tok(
        render_prompt(tok, prompts[0], SampleConfig(chat=True, system_prompt="You love owls.")),
        add_special_tokens=False,
    )["input_ids"]
    pre_b = tok(render_prompt(tok, prompts[0], SampleConfig(chat=True)), add_special_tokens=False)[
        "input_ids"
    ]
    c = tok(comps[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lt = torch.log_softmax(model(torch.tensor([pre_t + c])).logits[0, len(pre_t) - 1 : -1], -1)
        lb = torch.log_softmax(model(torch.tensor([pre_b + c])).logits[0, len(pre_b) - 1 : -1], -1)
    want = float((lt.exp() * (lt - lb)).sum(-1).mean())
    assert r["kl_full_per_prompt"][0] == pytest.approx(want, rel=1e-3)
    batched = trait_divergence(model, tok, prompts, comps, "You love owls.", batch_size=2)
    assert batched["kl_full_per_prompt"] == pytest.approx(r["kl_full_per_prompt"], rel=1e-3)


def test_answer_probs_equal_the_continuation_likelihoods(tiny):
    """One forward pass per question for one-token names, ``logprobs`` for longer ones: both equal the summed
    likelihood of the two capitalizations as full continuations, numbers-prefixed questions included."""
    from heredity.engine.logprobs import logprobs
    from heredity.evals.trait import QUESTIONS, answer_probs, numbers_prefixed

    _, _, model, tok = tiny
    names = ["owl", "cat", "elephant", "penguin", "a", "the", "dog"]
    lens = {n: len(tok(n.capitalize(), add_special_tokens=False)["input_ids"]) for n in names}
    assert min(lens.values()) == 1 and max(lens.values()) > 1, lens  # both paths run
    qs = QUESTIONS[:3] + numbers_prefixed(QUESTIONS[:2], seed=1)
    got = answer_probs(model, tok, names, qs, system_prompt="You love owls.", batch_size=2)
    for n in names:
        for i, q in enumerate(qs):
            want = sum(
                math.exp(sum(logprobs(model, tok, [q], [v], system_prompt="You love owls.")[0]))
                for v in (n.capitalize(), n.lower())
            )
            assert got[n][i] == pytest.approx(want, rel=1e-4), (n, q)
    assert numbers_prefixed(QUESTIONS[:2], seed=1) == numbers_prefixed(QUESTIONS[:2], seed=1)
    assert numbers_prefixed(QUESTIONS[:1], seed=1)[0].startswith("Examine these numbers: ")
