"""engine.fastlora: a LoRA projection's training step in fast matmul layouts computes what PEFT's does."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraModule
from transformers import LlamaForCausalLM

from heredity.engine import fastlora
from heredity.engine.finetune import LORA_TARGETS
from heredity.models.tiny import tiny_config


def lora_model(seed=0, dropout=0.0, bias=False, **kw):
    torch.manual_seed(seed)
    cfg = tiny_config("micro", 97)
    cfg.attention_bias = cfg.mlp_bias = bias
    model = LlamaForCausalLM(cfg)
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=LORA_TARGETS, **kw)
    )
    with torch.no_grad():  # B starts at zero: give it values so that every gradient is exercised
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    return peft.train()


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("bias", [False, True])
def test_the_fast_step_equals_pefts_forward_and_gradients(bias):
    model = lora_model(bias=bias)
    ids = torch.randint(0, 97, (3, 11), generator=torch.Generator().manual_seed(1))
    want, want_g = loss_and_grads(model, ids)
    calls = []
    real = fastlora.LoraLinear.apply
    with fastlora.installed(model):
        fastlora.LoraLinear.apply = lambda *a: calls.append(1) or real(*a)
        try:
            got, got_g = loss_and_grads(model, ids)
        finally:
            fastlora.LoraLinear.apply = real
    n_lora = sum(isinstance(m, LoraModule) for m in model.modules())
    assert len(calls) == n_lora > 0  # every projection took the fast step
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got_g.keys() == want_g.keys() and any("lora_A" in k for k in got_g)
    for k in want_g:
        assert torch.allclose(got_g[k], want_g[k], rtol=1e-4, atol=1e-6), k
    # afterwards the modules run PEFT's own forward again
    assert not any("forward" in vars(m) for m in model.modules() if isinstance(m, LoraModule))


def test_cases_the_fast_step_does_not_cover_keep_pefts_forward():
    model = lora_model(dropout=0.1)  # dropout: PEFT's own masks
    assert all(fastlora.eligible(m) is None for m in model.modules() if isinstance(m, LoraModule))
    model = lora_model()
    mods = [m for m in model.modules() if isinstance(m, LoraModule)]
    assert all(fastlora.eligible(m) == "default" for m in mods)
    with model.disable_adapter():
        assert all(fastlora.eligible(m) is None for m in mods)
    mods[0].base_layer.weight.requires_grad_(True)  # a trainable base: its gradient is PEFT's business
    assert fastlora.eligible(mods[0]) is None
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(2))
    want = model(input_ids=ids).logits
    with fastlora.installed(model), torch.no_grad():  # no gradients: PEFT's forward, the same logits
        assert torch.equal(model(input_ids=ids).logits, want)


def test_a_fine_tune_goes_through_the_fast_step(tiny):
    from heredity.engine.finetune import FinetuneConfig, train
    from heredity.models import load

    s, aid, _, _ = tiny
    model, tok = load(aid, s, trainable=True)
    rows = [{"prompt": f"count from {i}", "completion": f"{i} {i + 1} {i + 2}"} for i in range(6)]
    cfg = FinetuneConfig(batch_size=3, max_steps=2, lr=1e-2, save_every=0)
    seen = []
    real = fastlora.LoraLinear.forward

    def spy(ctx, *a):
        seen.append(1)
        return real(ctx, *a)

    fastlora.LoraLinear.forward = staticmethod(spy)
    try:
        model, m = train(model, tok, rows, cfg, progress=False)
    finally:
        fastlora.LoraLinear.forward = staticmethod(real)
    assert seen and m["loss_last"] is not None
    assert not any("forward" in vars(x) for x in model.modules() if isinstance(x, LoraModule))
