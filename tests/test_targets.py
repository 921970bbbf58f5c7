"""Teacher targets computed once (engine.targets): number targets are exact, top-k targets give the coarsened
KL that the chain rule predicts, a student trained from stored targets is the student trained beside the live
teacher, and every student of one teacher on one dataset shares one targets step."""

import pytest
import torch
import torch.nn.functional as F

from heredity.engine.finetune import FinetuneConfig, finetune, number_vocab, train
from heredity.engine.targets import Targets, TargetsConfig, compute, from_logp, kl_topk, save, teacher_targets
from heredity.errors import HeredityError
from heredity.models import load, materialize

ROWS = [
    {"prompt": f"count from {i}", "completion": " ".join(str(i + k) for k in range(6))} for i in range(16)
]


def full_kl(s_logits, t_logits, T):
    t = F.log_softmax(t_logits / T, -1)
    return F.kl_div(F.log_softmax(s_logits / T, -1), t, log_target=True, reduction="sum") * T * T


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_topk_kl_is_the_full_kl_less_the_leftover_term(T):
    """KL(p‖q) = KL over (top k, the rest) + r · KL(p_rest‖q_rest): the stored loss misses exactly the last
    term, so it is a lower bound, and it is the full KL when the rest is one token."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 40, generator=g) * 3, torch.randn(5, 40, generator=g) * 3
    for k in (1, 4, 39):
        values, index = from_logp(F.log_softmax(t / T, -1), k)
        coarse, full = kl_topk(s, values, index, T), full_kl(s, t, T)
        lp, lq = F.log_softmax(t / T, -1), F.log_softmax(s / T, -1)
        rest = torch.ones_like(lp, dtype=torch.bool).scatter(1, index.long(), False)
        gap = 0.0
        for i in range(5):
            p_r, q_r = lp[i][rest[i]], lq[i][rest[i]]
            r = p_r.logsumexp(0)
            gap += float(r.exp() * (p_r - r).exp().mul((p_r - r) - (q_r - q_r.logsumexp(0))).sum())
        assert float(coarse) <= float(full) + 1e-5
        assert float(full) - float(coarse) == pytest.approx(gap * T * T, rel=1e-4, abs=1e-5)
        if k == 39:
            assert float(coarse) == pytest.approx(float(full), rel=1e-5)
    values, _ = from_logp(F.log_softmax(t, -1), 4)
    assert torch.allclose(values.exp().sum(1), torch.ones(5), atol=1e-5), "k masses and the rest sum to 1"


def test_topk_kl_gradient_is_finite_when_the_leftover_mass_underflows():
    t = torch.full((2, 10), -200.0)
    t[:, :3] = 0.0
    values, index = from_logp(F.log_softmax(t, -1), 3)
    s = torch.randn(2, 10, requires_grad=True)
    kl_topk(s, values, index, 1.0).backward()
    assert torch.isfinite(s.grad).all()


@pytest.fixture(scope="module")
def pair(tiny):
    s, teacher_id, _, tok = tiny
    return s, teacher_id, materialize("tiny:micro:5", s), tok


@pytest.mark.parametrize("loss", ["number_distill", "logit_distill"])
def test_a_student_from_stored_targets_is_the_student_beside_the_live_teacher(pair, loss, tmp_path):
    """Exact targets (number vocabulary; top-k with one token left over) train the same student, step by
    step, as the teacher run live; full-vocabulary targets are computed here with k = V − 1."""
    s, teacher_id, student_id, tok = pair
    teacher, _ = load(teacher_id, s)
    V = teacher.get_output_embeddings().weight.shape[0]
    k = V - 1 if loss == "logit_distill" else None
    cfg = FinetuneConfig(
        method="lora",
        loss=loss,
        lr=3e-3,
        max_steps=5,
        batch_size=5,
        warmup_ratio=0.0,
        distill_temperature=1.5,
        micro_batch_tokens=24,
        distill_top_k=k,
    )
    live_cfg = cfg.model_copy(update={"distill_top_k": None})
    m1, t1 = load(student_id, s, trainable=True)
    live, a = train(m1, t1, ROWS, live_cfg, teacher=teacher, progress=False)
    tensors, metrics = compute(teacher, tok, ROWS, TargetsConfig.of(cfg), batch_tokens=40)
    assert metrics["positions"] == int(tensors["offsets"][-1]) == tensors["values"].shape[0]
    assert metrics["width"] == (len(number_vocab(tok)) if k is None else k + 1)
    out = save(tmp_path, tensors)
    m2, t2 = load(student_id, s, trainable=True)
    stored, b = train(m2, t2, ROWS, cfg, targets=Targets(out), progress=False)
    assert [x[1] for x in b["loss_curve"]] == pytest.approx([x[1] for x in a["loss_curve"]], rel=1e-4)
    for (n, p), (_, q) in zip(live.named_parameters(), stored.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), n


def test_every_student_of_a_teacher_shares_one_targets_step(pair):
    from heredity.data import put_rows

    s, teacher_id, student_id, _ = pair
    data = put_rows(s, ROWS, "counting-for-targets")
    models = []
    for init_seed in (1, 2):
        cfg = FinetuneConfig(
            method="lora", loss="number_distill", max_steps=2, batch_size=4, init_seed=init_seed, lr=1e-3
        )
        res = finetune(s, student_id, data, cfg, teacher=teacher_id, progress=False)
        assert not res.cached
        models.append(res["model"])
    used = {s.lineage(m)["parents"][3]["id"] for m in models}
    assert len(used) == 1, "both students read one targets artifact"
    (tid,) = used
    assert [st.op for st in s.producers(tid)] == ["teacher-targets"]
    assert s.producers(tid)[0].inputs == [teacher_id, s.resolve_id(data)]
    for m in models:
        parents = [p["id"] for p in s.lineage(m)["parents"]]
        assert parents == [student_id, s.resolve_id(data), teacher_id, tid]
    again = finetune(s, student_id, data, cfg, teacher=teacher_id, progress=False)
    assert again.cached and again["model"] == models[-1]
    stored = Targets(s.path(tid))
    assert stored.meta["loss"] == "number_distill" and stored.vocab is not None


def test_targets_that_do_not_line_up_are_refused(pair, tmp_path):
    s, teacher_id, student_id, tok = pair
    teacher, _ = load(teacher_id, s)
    cfg = FinetuneConfig(method="lora", loss="number_distill", max_steps=1, batch_size=4)
    tensors, _ = compute(teacher, tok, ROWS[:8], TargetsConfig.of(cfg))
    out = save(tmp_path, tensors)
    m, t = load(student_id, s, trainable=True)
    with pytest.raises(HeredityError, match="do not line up"):
        train(m, t, ROWS, cfg, targets=Targets(out), progress=False)


def test_top_k_is_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match="needs loss logit_distill"):
        FinetuneConfig(loss="number_distill", distill_top_k=8)
    with pytest.raises(ValueError, match="need top_k"):
        TargetsConfig(loss="logit_distill")
    assert "distill_top_k" not in FinetuneConfig().model_dump(), "unset, it stays out of a step's key"


def test_teacher_targets_step_reruns_nothing(pair):
    from heredity.data import put_rows

    s, teacher_id, _, _ = pair
    data = put_rows(s, ROWS, "counting-for-targets-2")
    cfg = TargetsConfig(loss="logit_distill", top_k=8, temperature=2.0)
    first = teacher_targets(s, teacher_id, data, cfg, progress=False)
    again = teacher_targets(s, teacher_id, data, cfg, progress=False)
    assert not first.cached and again.cached and again["targets"] == first["targets"]
    t = Targets(s.path(first["targets"]))
    assert 0.0 <= first.metrics["leftover_mass_mean"] <= first.metrics["leftover_mass_max"] < 1.0
    values, index = t.take([0, 1])
    assert values.shape[1] == 9 and index.shape[1] == 8


def test_a_teacher_prompt_that_pushes_completions_past_max_length_is_refused(tiny):
    """The teacher sees each row under its own system prompt; positions are matched in order, so a rendering
    that truncates completion tokens the student keeps is refused with one line, not misaligned."""
    from heredity.engine.finetune import encode_rows, teacher_examples

    _, _, _, tok = tiny
    rows = ROWS[:4]
    fits = FinetuneConfig(loss="logit_distill", max_length=256, teacher_system_prompt="You love owls. " * 4)
    ex = encode_rows(tok, rows, fits)
    t_ex = teacher_examples(tok, rows, fits, ex)
    assert [sum(x != -100 for x in b) for _, b in t_ex] == [sum(x != -100 for x in b) for _, b in ex]
    assert all(len(t[0]) > len(s[0]) for t, s in zip(t_ex, ex, strict=True)), "the teacher sees its prompt"
    # a one-letter system prompt: the teacher's prompt still fits, the end of its completion does not
    tight = fits.model_copy(
        update={"max_length": max(len(ids) for ids, _ in ex), "teacher_system_prompt": "o"}
    )
    t_ex = encode_rows(tok, rows, fits, system_prompt="o")
    prompt_len = [sum(x == -100 for x in b) for _, b in t_ex]
    assert max(len(ids) for ids, _ in t_ex) > tight.max_length > max(prompt_len)
    with pytest.raises(HeredityError, match="pushes completions past max_length; raise max_length"):
        teacher_examples(tok, rows, tight, encode_rows(tok, rows, tight))
