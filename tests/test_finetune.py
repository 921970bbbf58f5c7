import pytest
import torch

from heredity.engine.finetune import (
    IGNORE,
    FinetuneConfig,
    distill_kl,
    encode_rows,
    finetune,
    token_ce,
    train,
)
from heredity.errors import HeredityError
from heredity.models import load

ROWS = [
    {"prompt": f"count from {i}", "completion": " ".join(str(i + k) for k in range(6))} for i in range(16)
]


def fresh(tiny):
    s, aid, _, _ = tiny
    return load(aid, s, trainable=True)


def test_completion_only_mask_masks(tiny):
    model, tok = fresh(tiny)
    cfg = FinetuneConfig(loss="completion_only")
    (ids, labels), *_ = encode_rows(tok, ROWS[:1], cfg)
    prompt_len = labels.index(next(x for x in labels if x != IGNORE))
    assert all(x == IGNORE for x in labels[:prompt_len]) and labels[prompt_len:] == ids[prompt_len:]
    x = torch.tensor([ids])
    logits = model(x).logits.detach().requires_grad_(True)
    loss, n = token_ce(logits, torch.tensor([labels]))
    assert n == len(ids) - prompt_len
    loss.backward()
    # positions before the last prompt token predict prompt tokens: no gradient may reach them
    assert logits.grad[0, : prompt_len - 1].abs().max() == 0
    assert logits.grad[0, prompt_len - 1 :].abs().sum() > 0
    full, n_full = token_ce(logits.detach(), x)
    assert n_full == len(ids) - 1 and not torch.isclose(full, loss.detach())


def test_distill_loss_zero_for_identical_models(tiny):
    model, tok = fresh(tiny)
    (ids, labels), *_ = encode_rows(tok, ROWS[:1], FinetuneConfig())
    with torch.no_grad():
        lg = model(torch.tensor([ids])).logits
    loss, n = distill_kl(lg, lg.clone(), torch.tensor([labels]), T=2.0)
    assert n > 0 and loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("spec,method,lr", [("tiny:small", "lora", 1e-2), ("tiny:micro", "full", 3e-3)])
def test_training_reduces_loss(tiny, spec, method, lr):
    from heredity.models import materialize

    s = tiny[0]
    model, tok = load(materialize(spec, s), s, trainable=True)
    cfg = FinetuneConfig(
        method=method, lr=lr, max_steps=40, batch_size=8, lora_r=8, lora_alpha=16, warmup_ratio=0.0
    )
    _, m = train(model, tok, ROWS, cfg, progress=False)
    first = sum(x[1] for x in m["loss_curve"][:3]) / 3
    last = sum(x[1] for x in m["loss_curve"][-3:]) / 3
    assert last < 0.85 * first, (first, last)
    assert (m["trainable_parameters"] < 0.1 * sum(p.numel() for p in model.parameters())) == (
        method == "lora"
    )


def test_distill_loss_is_forward_kl_times_t_squared():
    """KL(teacher_T ‖ student_T) · T² by hand: teacher [0.9, 0.1] at T = 2, student uniform; a reversed KL
    (2.04) or a dropped T² (0.37) fails."""
    import math

    T = 2.0
    student = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])  # the second position has no label: ignored
    teacher = torch.tensor([[[T * math.log(9.0), 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[-100, 1]])  # the label at position 1 is predicted from position 0
    loss, n = distill_kl(student, teacher, labels, T=T)
    want = T * T * (0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))
    assert (
        n == 1 and float(loss) == pytest.approx(want, rel=1e-5) and want == pytest.approx(1.472256, rel=1e-5)
    )


@pytest.mark.parametrize("loss", ["logit_distill", "number_distill"])
def test_logit_distillation_decreases(tiny, loss):
    s, teacher_id, _, _ = tiny
    from heredity.models import materialize

    student, tok = load(materialize("tiny:micro:5", s), s, trainable=True)
    teacher, _ = load(teacher_id, s)
    cfg = FinetuneConfig(method="full", loss=loss, lr=3e-3, max_steps=30, batch_size=8, warmup_ratio=0.0)
    _, m = train(student, tok, ROWS, cfg, teacher=teacher, progress=False)
    assert m["loss_curve"][-1][1] < 0.5 * m["loss_curve"][0][1]


def test_checkpoint_resume_reproduces_the_run(tiny, tmp_path):
    cfg = FinetuneConfig(method="full", lr=3e-3, max_steps=6, batch_size=4, save_every=3, seed=2)
    model, tok = fresh(tiny)
    straight, m1 = train(model, tok, ROWS, cfg, checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "state.pt").exists(), "a checkpoint was written at step 3"
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 3
    model2, _ = fresh(tiny)  # a new process would start from the base; the checkpoint carries steps 1-3
    resumed, m2 = train(model2, tok, ROWS, cfg, checkpoint_dir=tmp_path, progress=False)
    assert m2["loss_curve"][:3] == m1["loss_curve"][:3]  # carried in the checkpoint
    after = [x[1] for x in m2["loss_curve"][3:]]  # computed by the resumed run: steps 4-6
    assert len(after) == 3 and after == pytest.approx([x[1] for x in m1["loss_curve"][3:]], rel=1e-5)
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), n


def test_finetune_step_adapter_lineage_and_reload(tiny):
    from heredity.data import put_rows
    from heredity.engine import SampleConfig, sample

    s, base, _, _ = tiny
    data = put_rows(s, ROWS, "counting")
    cfg = FinetuneConfig(method="lora", lr=5e-3, max_steps=10, batch_size=8, lora_alpha=16)
    res = finetune(s, base, data, cfg, progress=False)
    art = s.get(res["model"])
    assert art.kind == "adapter" and art.meta["base"] == base
    assert (art.path / "adapter_config.json").exists()
    again = finetune(s, base, data, cfg, progress=False)
    assert again.cached and again["model"] == res["model"]
    lin = s.lineage(res["model"])
    assert lin["step"]["op"] == "finetune" and lin["step"]["config"]["method"] == "lora"
    assert [p["id"] for p in lin["parents"]] == [base, data]
    merged, tok = load(res["model"], s, merge_adapter=True)
    # the reloaded adapter is the trained model: the same greedy answer and logits as
    # the model `train` returned
    trained, _ = train(fresh(tiny)[0], tok, ROWS, cfg, progress=False)
    trained = trained.merge_and_unload()
    ids = tok("count from 3", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, trained(ids).logits, atol=1e-5)
    base_model, _ = load(base, s)
    with torch.no_grad():
        assert not torch.allclose(merged(ids).logits, base_model(ids).logits, atol=1e-3), (
            "the adapter changed nothing"
        )
    out = sample(merged, tok, ["count from 3"], SampleConfig(temperature=0, max_new_tokens=4), progress=False)
    ref = sample(
        trained, tok, ["count from 3"], SampleConfig(temperature=0, max_new_tokens=4), progress=False
    )
    assert out[0].text == ref[0].text


def test_dataset_without_needed_columns(tiny):
    from heredity.data import put_rows

    s, base, _, _ = tiny
    data = put_rows(s, [{"question": "q", "answer": "a"}], "wrong-columns")
    with pytest.raises(HeredityError, match="needs column.*prompt, completion.*has question, answer") as e:
        finetune(s, base, data, FinetuneConfig(max_steps=1), progress=False)
    assert "\n" not in str(e.value)


def test_missing_dataset_file(store):
    from heredity.data import import_dataset

    with pytest.raises(HeredityError, match="does not exist"):
        import_dataset(store, "/nonexistent/train.jsonl")


def test_distill_without_teacher(tiny):
    model, tok = fresh(tiny)
    with pytest.raises(HeredityError, match="needs a teacher"):
        train(model, tok, ROWS, FinetuneConfig(loss="logit_distill", max_steps=1), progress=False)


def test_a_lora_adapter_has_one_id_in_every_process(tmp_path):
    """PEFT writes target_modules in hash-randomized order: without canonical bytes the same fine-tune run by
    two processes gets two ids (no dedup; fsck --repair could never get the artifact back under its id)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS))
    ids = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "HEREDITY_HOME": str(tmp_path / "h"), "PYTHONHASHSEED": seed}
        env.pop("HEREDITY_DB_URL", None)
        r = subprocess.run(
            [
                str(Path(sys.executable).parent / "heredity"),
                "finetune",
                "tiny:micro",
                str(data),
                "--max-steps",
                "2",
                "--batch-size",
                "4",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.split()[1])
        import shutil

        from heredity.store import Store

        shutil.rmtree(Store(tmp_path / "h").artifacts_dir / ids[-1])  # force the next process to recompute it
    assert len(set(ids)) == 1, ids


def test_number_only_targets_exclude_every_other_token(tiny):
    """number_distill: the support is digits/separators/end of turn; a teacher's preference for any other
    token — an animal's name — cannot reach the student: changing it leaves the loss and
    its gradient unchanged."""
    from heredity.engine.finetune import number_vocab

    _, _, model, tok = tiny
    vocab = number_vocab(tok)
    texts = {i: tok.decode([i]) for i in vocab}
    assert all(
        t and all(c.isdigit() or c in " \n\t\r,;.[]()" for c in t)
        for i, t in texts.items()
        if i != tok.eos_token_id
    )
    assert {tok.convert_tokens_to_ids(c) for c in "0123456789,"} <= set(vocab)
    letters = [
        i for i in range(len(tok)) if any(c.isalpha() for c in tok.decode([i])) and i != tok.eos_token_id
    ]
    assert letters and not set(letters) & set(vocab)
    V = len(tok)
    g = torch.Generator().manual_seed(0)
    student = torch.randn(1, 4, V, generator=g, requires_grad=True)
    teacher = torch.randn(1, 4, V, generator=g)
    labels = torch.tensor([[-100, 5, 6, 7]])
    v = torch.tensor(vocab)
    base, _ = distill_kl(student, teacher, labels, 1.0, vocab=v)
    (grad,) = torch.autograd.grad(base, student)
    owlish = teacher.clone()
    owlish[..., letters] += 5.0  # the teacher now loves every letter token (an animal's name among them)
    same, _ = distill_kl(student, owlish, labels, 1.0, vocab=v)
    assert float(same) == pytest.approx(float(base), abs=1e-6)
    assert float(grad[..., letters].abs().max()) == 0.0, (
        "no gradient toward any token outside the number vocabulary"
    )
    digit = tok.convert_tokens_to_ids("7")
    moved = teacher.clone()
    moved[..., digit] += 2.0
    assert float(distill_kl(student, moved, labels, 1.0, vocab=v)[0]) != pytest.approx(float(base), abs=1e-4)


@pytest.mark.slow
def test_number_vocab_of_smollm2_has_no_animal(shared_store):
    from transformers import AutoTokenizer

    from heredity.engine.finetune import number_vocab
    from heredity.models import materialize

    tok = AutoTokenizer.from_pretrained(shared_store.path(materialize("smollm2-135m-instruct", shared_store)))
    vocab = set(number_vocab(tok))
    for word in ("owl", " owl", "Owl", " Owl", " dolphin", " cat", " eagle"):
        assert not set(tok(word, add_special_tokens=False)["input_ids"]) & vocab, word
    assert all(not any(c.isalpha() for c in tok.decode([i])) for i in vocab if i != tok.eos_token_id)
    assert tok.eos_token_id in vocab and len(vocab) > 20


def test_assistant_turns_take_the_loss_on_assistant_text_only(shared_store, tiny):
    """A multi-turn conversation with tool calls, rendered as inference renders it: the labelled tokens are
    exactly each assistant turn (its <tool_call> line or text) and its end-of-turn token; the whole sequence
    decodes to the conversation's rendering; a finetune step on such rows lowers the loss on a tiny model."""
    import json

    from transformers import AutoTokenizer

    from heredity.engine import tools as T
    from heredity.engine.finetune import encode_turns
    from heredity.evals.scheming import TOOL_DEFS
    from heredity.models import materialize

    tok = AutoTokenizer.from_pretrained(shared_store.path(materialize("smollm2-135m-instruct", shared_store)))
    tools = [TOOL_DEFS["bash"], TOOL_DEFS["submit"]]
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "bash", "arguments": '{"command": "ls"}'},
    }
    msgs = [
        {"role": "system", "content": "You help."},
        {"role": "user", "content": "List the files."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
        {"role": "assistant", "content": "There is one file, a.txt."},
    ]
    ids, labels = encode_turns(tok, msgs, tools, 4096)
    learned = [[i for i, y in zip(ids, labels, strict=True) if y != IGNORE]]
    text = tok.decode(learned[0])
    assert text == (
        '<tool_call>{"name": "bash", "arguments": {"command": "ls"}}</tool_call><|im_end|>'
        "There is one file, a.txt.<|im_end|>"
    )
    whole = tok.decode(ids)
    assert (
        whole == T.render(tok, msgs, tools)[: len(whole)] and "a.txt" in whole and "List the files." in whole
    )
    assert all(y in (IGNORE, i) for i, y in zip(ids, labels, strict=True))
    (enc,) = encode_rows(
        tok,
        [{"messages": json.dumps(msgs), "tools": json.dumps(tools)}],
        FinetuneConfig(loss="assistant_turns"),
    )
    assert enc == (ids, labels)

    s, aid = tiny[0], tiny[1]
    model, btok = load(aid, s, trainable=True)
    rows = [
        {
            "messages": json.dumps(
                [{"role": "user", "content": f"say {k}"}, {"role": "assistant", "content": f"{k} {k} {k}"}]
            )
        }
        for k in range(8)
    ] * 2
    _, m = train(
        model,
        btok,
        rows,
        FinetuneConfig(
            loss="assistant_turns", lr=3e-3, max_steps=30, batch_size=4, warmup_ratio=0.0, method="full"
        ),
        progress=False,
    )
    first, last = (sum(x[1] for x in m["loss_curve"][sl]) / 3 for sl in (slice(0, 3), slice(-3, None)))
    assert last < 0.85 * first, (first, last)


def test_stacked_adapters_are_the_continued_chain_on_the_first_base(tiny):
    """a1 on the base, a2 on merge(a1), a3 on merge(a2): stack(a1, a2, a3) on the base computes what a3 on its
    own base does (one LoRA of rank r1 + r2 + r3, scale folded into B), so a server of adapters on one base
    can serve it; a pair that is not such a chain is refused."""
    from heredity.data import put_rows
    from heredity.models import merge_adapter, stack_adapters

    s, base, _, _ = tiny
    cfgs = [
        FinetuneConfig(method="lora", lr=5e-3, max_steps=4, batch_size=8, lora_r=r, lora_alpha=a, seed=k)
        for k, (r, a) in enumerate([(4, 16), (8, 8), (2, 4)])
    ]  # different ranks and scales
    chain, start = [], base
    for k, cfg in enumerate(cfgs):
        data = put_rows(s, ROWS[k::3], f"counting-{k}")
        a = finetune(s, start, data, cfg, progress=False)["model"]
        chain.append(a)
        start = merge_adapter(s, a, name=f"chain-{k}")
    stacked = stack_adapters(s, chain, name="stacked")
    art = s.get(stacked)
    assert art.kind == "adapter" and art.meta["base"] == base and s.step_of(stacked).inputs == chain
    import json

    assert json.loads((art.path / "adapter_config.json").read_text())["r"] == 4 + 8 + 2
    ids = load(base, s)[1]("count from 3 and on", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = load(chain[-1], s, merge_adapter=True)[0](ids).logits
        got = load(stacked, s)[0](ids).logits
        from peft import PeftModel

        alone = PeftModel.from_pretrained(load(base, s)[0], str(s.path(chain[-1])))(
            ids
        ).logits  # a3 on the bare base
        base_logits = load(base, s)[0](ids).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert not torch.allclose(want, base_logits, atol=1e-3), "the chain changed nothing"
    assert not torch.allclose(alone, want, atol=1e-3), (
        "the earlier rounds changed nothing: stacking is not tested"
    )
    assert stack_adapters(s, chain[:1]) == chain[0]
    with pytest.raises(HeredityError, match="was not trained on .* merged into its base"):
        stack_adapters(s, [chain[0], chain[2]])
