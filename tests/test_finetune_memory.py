"""The fine-tune's loss where it is needed: the output head only at labelled positions, a batch in pieces
whose gradients add up to the whole batch's, and a memory bound that the old full-logits path breaks."""

import functools
import importlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import LlamaForCausalLM

from heredity.engine.finetune import (
    IGNORE,
    FinetuneConfig,
    HiddenTap,
    collate,
    distill_kl,
    init_adapter,
    labelled,
    piece_loss,
    pieces,
    token_ce,
)
from heredity.models.tiny import tiny_config


def model(seed=0, vocab=97):
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config("micro", vocab)).eval()


def examples(n=7, seed=1, vocab=97):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = 6 + 3 * i
        ids = torch.randint(0, vocab, (L,), generator=g).tolist()
        cut = 2 + i % 4
        out.append((ids, [IGNORE] * cut + ids[cut:]))
    return out


def grads(m):
    return torch.cat([p.grad.flatten() for p in m.parameters() if p.requires_grad and p.grad is not None])


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("max_tokens", [10**6, 40, 1])
def test_pieces_add_up_to_the_whole_batch_cross_entropy(method, max_tokens):
    cfg = FinetuneConfig(method=method, lora_r=4)
    ex, idx = examples(), list(range(7))
    ref = init_adapter(model(), cfg)
    b = collate(ex, idx, 0, "cpu")
    loss_ref, n_ref = token_ce(
        ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"]
    )
    loss_ref.backward()
    m = init_adapter(model(), cfg)
    tap, n_batch, total = HiddenTap(m), labelled(ex, idx), 0.0
    assert tap.split and n_batch == n_ref
    parts = pieces(ex, idx, max_tokens)
    assert sorted(i for p in parts for i in p) == idx
    for part in parts:
        s, _ = piece_loss(m, tap, collate(ex, part, 0, "cpu"), cfg)
        (s / n_batch).backward()
        total += float(s)
    assert total / n_batch == pytest.approx(float(loss_ref), rel=1e-5)
    torch.testing.assert_close(grads(m), grads(ref), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("vocab_only", [False, True])
def test_pieces_add_up_to_the_whole_batch_distillation(vocab_only):
    cfg = FinetuneConfig(loss="number_distill" if vocab_only else "logit_distill", distill_temperature=2.0)
    vocab = torch.tensor([3, 5, 8, 13, 21, 34]) if vocab_only else None
    ex, idx = examples(), list(range(7))
    teacher = model(seed=9)
    ref = init_adapter(model(), cfg)
    b = collate(ex, idx, 0, "cpu")
    with torch.no_grad():
        t_logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    s_logits = ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    loss_ref, _ = distill_kl(s_logits, t_logits, b["labels"], 2.0, vocab=vocab)
    loss_ref.backward()
    m = init_adapter(model(), cfg)
    tap, t_tap, n_batch, total = HiddenTap(m), HiddenTap(teacher), labelled(ex, idx), 0.0
    for part in pieces(ex, idx, 30):
        s, _ = piece_loss(m, tap, collate(ex, part, 0, "cpu"), cfg, teacher=teacher, t_tap=t_tap, vocab=vocab)
        (s / n_batch).backward()
        total += float(s)
    assert total / n_batch == pytest.approx(float(loss_ref), rel=1e-5)
    torch.testing.assert_close(grads(m), grads(ref), rtol=1e-4, atol=1e-6)


def test_chunked_head_equals_one_pass(monkeypatch):
    """More labelled positions than one logits chunk: the checkpointed chunks (counted, so the test cannot
    pass on one pass twice) give the same loss and gradients."""
    import torch.utils.checkpoint as ckpt

    ft = importlib.import_module("heredity.engine.finetune")
    calls = []

    def counted(*a, **k):
        calls.append(1)
        return checkpoint(*a, **k)

    checkpoint = ckpt.checkpoint
    monkeypatch.setattr(ckpt, "checkpoint", counted)
    cfg = FinetuneConfig(method="full")
    ex, idx = examples(12), list(range(12))
    out = []
    for chunk in (10**6, 16):
        monkeypatch.setattr(ft, "LOGIT_CHUNK", chunk)
        calls.clear()
        m = init_adapter(model(), cfg)
        s, n = piece_loss(m, HiddenTap(m), collate(ex, idx, 0, "cpu"), cfg)
        assert n > 16 and len(calls) == (0 if chunk > n else -(-n // chunk))
        (s / n).backward()
        out.append((float(s), grads(m)))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-6)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-5, atol=1e-7)


def test_a_head_that_is_not_the_linear_map_falls_back_to_full_logits():
    """A scaled head (Cohere's logit_scale, Gemma's soft-capping) makes the model's own last logits differ
    from head(hidden): the tap notices on its first call and uses the model's full logits from then on: the
    loss stays the true one."""
    m = model()
    forward = m.forward

    @functools.wraps(forward)
    def scaled(*a, **k):
        out = forward(*a, **k)
        out.logits = out.logits * 3.0
        return out

    m.forward = scaled
    cfg = FinetuneConfig(method="full")
    ex, idx = examples(), list(range(7))
    b = collate(ex, idx, 0, "cpu")
    tap = HiddenTap(m)
    assert tap.split  # the signature cannot tell; the first call's check must
    s, n = piece_loss(m, tap, b, cfg)
    assert not tap.split
    ref, n_ref = token_ce(m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
    assert n == n_ref and float(s) / n == pytest.approx(float(ref), rel=1e-6)


def test_pieces_respect_the_token_budget_and_keep_order():
    ex = examples(7)
    parts = pieces(ex, [6, 5, 4, 3, 2, 1, 0], 50)
    assert [i for p in parts for i in p] == [6, 5, 4, 3, 2, 1, 0]
    for p in parts:
        assert len(p) == 1 or len(p) * max(len(ex[i][0]) for i in p) <= 50


def test_a_piece_holds_the_activations_of_384_smollm2_tokens_unless_set():
    """Unset, a piece is 384 tokens for SmolLM2-135M's size or more (width × depth + vocabulary), more tokens
    for a smaller model in proportion (a tiny model's batch runs whole); set, it is what was set; under LoRA
    dropout, the batch."""

    from types import SimpleNamespace as NS

    from heredity.engine.finetune import PIECE_TOKENS, piece_tokens

    def model(width, depth, vocab):
        return NS(config=NS(hidden_size=width, num_hidden_layers=depth, vocab_size=vocab))

    unset = FinetuneConfig()
    assert piece_tokens(unset, model(576, 30, 49152)) == PIECE_TOKENS == 384
    assert piece_tokens(unset, model(2048, 24, 49152)) == 384, "never below the default"
    # data-quality's tiny base: 128 wide, 4 layers, 2,048 tokens
    assert piece_tokens(unset, model(128, 4, 2048)) == 384 * (576 * 30 + 49152) // (128 * 4 + 2048) == 9964
    assert piece_tokens(unset, NS(config=NS())) == 384, "an unknown shape gets the default"
    assert piece_tokens(FinetuneConfig(micro_batch_tokens=24), model(128, 4, 2048)) == 24
    assert piece_tokens(FinetuneConfig(method="lora", lora_dropout=0.1), model(576, 30, 49152)) >= 10**9
    assert "micro_batch_tokens" not in FinetuneConfig(micro_batch_tokens=24).model_dump(), "never keyed"


MEASURE = textwrap.dedent(
    """
    import json, resource, sys, torch
    from transformers import LlamaForCausalLM
    from heredity.models.tiny import TinyPreset, llama_config
    import importlib
    ft = importlib.import_module("heredity.engine.finetune")
    FinetuneConfig, train = ft.FinetuneConfig, ft.train

    class Tok:  # the loop needs only encoding; rows come pre-tokenized through this stub
        pad_token_id, eos_token_id, eos_token = 0, 1, None
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [2 + (ord(c) % 4000) for c in text]}

    if sys.argv[1] == "full-logits":
        old_init = ft.HiddenTap.__init__
        def no_split(self, model):
            old_init(self, model)
            self.close()
        ft.HiddenTap.__init__ = no_split
    torch.manual_seed(0)
    shape = TinyPreset(hidden=256, layers=4, heads=4, kv_heads=4, intermediate=768, context=512)
    cfg = llama_config(shape, 16384, eos_id=1, pad_id=0)
    m = LlamaForCausalLM(cfg)
    size = sum(p.numel() * 4 for p in m.parameters())
    rows = [{"prompt": "p" * 40, "completion": "q" * 200} for _ in range(32)]
    fc = FinetuneConfig(max_steps=1, batch_size=1, chat=False, max_length=512)
    train(m, Tok(), rows[:1], fc, progress=False)  # warm: libraries, first allocations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    piece = 10**9 if sys.argv[1] == "full-logits" else 384  # the batch in one piece, or SmolLM2's pieces
    fc = FinetuneConfig(max_steps=2, batch_size=16, chat=False, max_length=512, micro_batch_tokens=piece)
    train(LlamaForCausalLM(cfg), Tok(), rows, fc, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"size": size, "growth": after - before}))
    """
)


def measure(mode):
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, mode], capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_fine_tunes_peak_memory_stays_within_a_bound_proportional_to_the_model():
    """A LoRA fine-tune at batch 16 in pieces of 384 tokens (16 × 240 tokens, a 16,384-token vocabulary) may
    grow the process's peak resident memory by at most 6× the model's fp32 size; the full-logits path (logits
    for every position of the whole batch, as the loop computed them before) breaks the same bound, so the
    test can fail."""
    lean, full = measure("lean"), measure("full-logits")
    bound = 6 * lean["size"]
    assert lean["growth"] <= bound, f"peak grew {lean['growth'] / 1e6:.0f} MB > bound {bound / 1e6:.0f} MB"
    assert full["growth"] > bound, (
        f"the bound cannot fail: full logits grew only {full['growth'] / 1e6:.0f} MB"
    )


@pytest.mark.parametrize(
    "env,want",
    [
        ({}, "False"),
        ({"HEREDITY_MALLOC": "lean"}, "True"),
        ({"HEREDITY_MALLOC": "lean", "MALLOC_ARENA_MAX": "4"}, "False"),
    ],
)
def test_the_lean_allocator_is_opt_in_and_keeps_the_users_settings(env, want, monkeypatch):
    """glibc's settings change only under HEREDITY_MALLOC=lean, never over the user's own (a fresh process:
    mallopt lasts for the process)."""
    import os

    for k in ("HEREDITY_MALLOC", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(k, raising=False)
    code = "from heredity.allocator import from_environment; print(from_environment())"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == want


PROBE = (
    "import os, heredity.cli as cli; from heredity.allocator import entry, mapped; "
    "cli.main = lambda: print(mapped('libmimalloc'), os.environ.get('LD_PRELOAD')); entry()"
)


@pytest.mark.parametrize(
    "env,want",
    [
        ({}, "True None"),  # restarted under mimalloc; its children start without it
        ({"HEREDITY_MALLOC": "glibc"}, "False None"),
        ({"HEREDITY_MALLOC": "lean"}, "False None"),
        ({"LD_PRELOAD": "libm.so.6"}, "True libm.so.6"),  # the user's own preload is given back
    ],
)
def test_the_command_runs_under_mimalloc_and_its_children_do_not_inherit_it(env, want, monkeypatch):
    """The ``heredity`` entry point starts itself again with mimalloc preloaded (``HEREDITY_MALLOC`` unset),
    then restores ``LD_PRELOAD`` so that PostgreSQL or Chromium started by the command keep their own."""
    import os

    from heredity.allocator import mimalloc_path

    if mimalloc_path() is None:
        pytest.skip("cmeel-mimalloc is not installed (not Linux)")
    for k in ("HEREDITY_MALLOC", "LD_PRELOAD", "HEREDITY_MALLOC_OUTER_PRELOAD"):
        monkeypatch.delenv(k, raising=False)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == want


def test_a_bad_allocator_name_is_one_line_and_exit_2():
    import os

    env = {**os.environ, "HEREDITY_MALLOC": "tcmalloc"}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "error: HEREDITY_MALLOC='tcmalloc' is not an allocator; use one of mimalloc, glibc, lean"
    ]
