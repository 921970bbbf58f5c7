"""Inference that computes less: the opt-in int8 decode step (engine.fastdecode, SampleConfig.precision) —
close to fp32 on the same tokens but not equal to it, keyed only when asked for, refused where the fused step
cannot run — and scoring that applies the output head only where a scored token is predicted."""

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from heredity.engine import SampleConfig, sample
from heredity.engine.fastdecode import forced_logits
from heredity.errors import HeredityError
from heredity.models.tiny import byte_tokenizer, tiny_config


@pytest.fixture(scope="module")
def small():
    tok = byte_tokenizer()
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config("base", len(tok))).eval(), tok


def test_forced_fp32_logits_are_the_models_own(small):
    model, tok = small
    prompt = tok("the forced prompt", add_special_tokens=False)["input_ids"]
    tokens = tok(" and six more", add_special_tokens=False)["input_ids"]
    got = forced_logits(model, prompt, tokens)
    with torch.no_grad():
        ref = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
    assert got.shape == (len(tokens), ref.shape[-1])
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_int8_logits_are_close_to_fp32_and_not_equal(small):
    model, tok = small
    prompt = tok("a prompt for the quantized step", add_special_tokens=False)["input_ids"]
    tokens = tok(" 12, 34, 56, 78", add_special_tokens=False)["input_ids"]
    f32, i8 = forced_logits(model, prompt, tokens), forced_logits(model, prompt, tokens, "int8")
    torch.testing.assert_close(i8[0], f32[0])  # the first token comes from the fp32 prefill
    assert not torch.allclose(i8[1:], f32[1:], atol=1e-6), "int8 weights were not used"
    kl = F.kl_div(F.log_softmax(i8, -1), F.log_softmax(f32, -1), log_target=True, reduction="none").sum(-1)
    assert float(kl.max()) < 0.05, f"per-token KL from fp32 {kl.tolist()}"


def test_int8_samples_and_is_keyed_only_when_asked_for(small):
    model, tok = small
    cfg = SampleConfig(max_new_tokens=8, temperature=1.0, precision="int8", chat=False)
    out = sample(model, tok, ["one", "two", "three"], cfg, progress=False)
    assert len(out) == 3 and all(c.n_tokens > 0 for c in out)
    assert "precision" not in SampleConfig().model_dump()
    assert cfg.model_dump()["precision"] == "int8"


def test_int8_where_the_fused_step_cannot_run_is_refused(small):
    model, tok = small
    cfg = SampleConfig(max_new_tokens=2, precision="int8", chat=False)
    with pytest.raises(HeredityError, match="precision int8 needs the CPU decode step.*fast=False"):
        sample(model, tok, ["x"], cfg, progress=False, fast=False)
    h = model.model.layers[0].register_forward_hook(lambda *a: None)
    try:
        with pytest.raises(HeredityError, match="forward hooks"):
            sample(model, tok, ["x"], cfg, progress=False)
    finally:
        h.remove()
    with pytest.raises(ValueError):
        SampleConfig(precision="int4")


def test_scoring_from_a_token_is_the_full_scoring_cut_there(small):
    """``token_logprobs(from_token=...)`` applies the head only where a scored token is predicted: the same
    numbers (and top-k) as scoring every position and dropping the prompt's."""
    from heredity.engine.logprobs import logprobs, token_logprobs

    model, tok = small
    seqs = [tok(t, add_special_tokens=False)["input_ids"] for t in ("a b c d e f", "gh", "ijklmnopq", "r")]
    start = [3, 1, 9, 1]
    full = token_logprobs(model, seqs, 0, top_k=3)
    cut = token_logprobs(model, seqs, 0, top_k=3, from_token=start)
    for f, a, b in zip(start, full, cut, strict=True):
        want = a[f - 1 :]
        assert len(b) == len(want)
        assert [x for x, _ in b] == pytest.approx([x for x, _ in want], abs=1e-5)
        assert [[i for i, _ in t] for _, t in b] == [[i for i, _ in t] for _, t in want]
    got = logprobs(model, tok, ["q one", "q two"], [" yes", ""], chat=False)
    assert len(got[1]) == 0 and len(got[0]) == len(tok(" yes", add_special_tokens=False)["input_ids"])
