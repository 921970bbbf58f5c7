"""The ChatGPT pipeline: tokenizer, pretraining, reward model, PPO pieces and loop, TRL
alternatives, the recipe."""

import copy
import json
import math
import subprocess
import sys

import pytest
import torch

from heredity.data.corpus import make_corpus, split_documents
from heredity.data.instructions import INSTRUCTIONS, instruction_rows, rule_score, synthetic_preferences
from heredity.engine.ppo import (
    PPOConfig,
    build_batch,
    gae,
    kl_per_token,
    masked_whiten,
    policy_loss,
    ppo_train,
    token_rewards,
    value_loss,
)
from heredity.engine.pretrain import PretrainConfig, lr_at, pretrain_step, train_tokenizer_step
from heredity.engine.reward import RewardConfig, normalize_pairs, reward_step, split_pairs
from heredity.errors import HeredityError
from heredity.models import load, materialize
from heredity.models.tiny import train_bpe

# ---- tokenizer -----------------------------------------------------------------------------------


def test_bpe_round_trips_any_text_and_learns_merges():
    from heredity.data.corpus import pydoc_documents

    docs = pydoc_documents()[:20]
    tok = train_bpe(docs, 600)
    assert len(tok) == 600
    assert [tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [
        0,
        1,
        2,
    ]
    for s in [
        "def f(x):\n    return x  # two  spaces",
        "héllo wörld",
        "日本語 🎉 \t\r\n",
        "",
        " leading",
        "trailing ",
        "<|im_end|> is special",
        "\x00\x7f bytes",
    ]:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == s
    text = docs[0][:2000]
    assert len(tok(text)["input_ids"]) < len(text.encode()) / 2  # merges were learned: ≥2 bytes per token
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(docs, 200)


def test_corpus_split_holds_out_whole_documents(tmp_path, store):
    rows = split_documents([f"doc {i} " * (i + 1) for i in range(20)], 0.2, seed=0)
    val = [r for r in rows if r["split"] == "val"]
    assert val and len(val) < len(rows)
    assert sum(len(r["text"]) for r in val) >= 0.2 * sum(len(r["text"]) for r in rows)
    one = split_documents(["para one\n\npara two\n\npara three\n\npara four"], 0.25, seed=0)
    assert [r["split"] for r in one] == ["train", "val"] and "para four" in one[1]["text"]
    with pytest.raises(HeredityError, match="does not exist"):
        make_corpus(store, [str(tmp_path / "missing.txt")])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(HeredityError, match="not UTF-8"):
        make_corpus(store, [str(bad)])


# ---- pretraining ---------------------------------------------------------------------------------


def test_pretraining_loss_drops_below_a_bound(tmp_path, store):
    # a fixed corpus with learnable structure; validation on held-out documents of the same kind
    docs = []
    for d in range(12):
        docs.append("\n".join(f"def add_{d}_{i}(x):\n    return x + {i}" for i in range(40)))
    files = []
    for i, d in enumerate(docs):
        p = tmp_path / f"doc{i}.py"
        p.write_text(d)
        files.append(str(p))
    corpus = make_corpus(store, files, val_fraction=0.2)
    tok = train_tokenizer_step(store, corpus, 300, progress=False)
    assert store.get(tok).kind == "tokenizer" and tok.startswith("t-")
    cfg = PretrainConfig(
        hidden=32,
        layers=2,
        heads=2,
        intermediate=64,
        context=32,
        iters=80,
        batch_size=8,
        lr=3e-3,
        warmup=5,
        eval_every=40,
        eval_batches=4,
        sample_tokens=8,
    )
    res = pretrain_step(store, corpus, tok, cfg, progress=False)
    m = res.metrics
    assert m["evals"][0]["iter"] == 40 and m["evals"][-1]["iter"] == 80
    assert m["val_loss"] < 0.5 * math.log(300), m["evals"]  # from ln V ≈ 5.7 at init to below 2.85
    assert m["val_perplexity"] == pytest.approx(math.exp(m["val_loss"]), rel=1e-2)
    # nats per character = the final val loss × val tokens / val characters (+1 per document: its separator)
    from transformers import AutoTokenizer

    from heredity.engine.pretrain import corpus_texts, token_stream

    val = corpus_texts(store, corpus)["val"]
    n_tok = len(token_stream(AutoTokenizer.from_pretrained(store.path(tok)), val))
    n_chr = sum(len(t) + 1 for t in val)
    assert m["val_nats_per_char"] == pytest.approx(m["evals"][-1]["val_loss"] * n_tok / n_chr, abs=1e-4)
    assert set(m["samples"][-1]["samples"]) == set(cfg.sample_prompts)
    # a plain HF checkpoint with the tokenizer, lineage corpus + tokenizer → model
    model, t = load(res["model"], store)
    assert model.config.model_type == "llama" and len(t) == 300
    assert set(store.step_of(res["model"]).inputs) == {corpus, tok}
    assert lr_at(0, cfg) == pytest.approx(cfg.lr / cfg.warmup)
    assert lr_at(cfg.iters, cfg) == pytest.approx(cfg.min_lr)


def test_corpus_too_small_for_the_context_is_a_clear_error(tmp_path, store):
    for i in range(2):
        (tmp_path / f"d{i}.txt").write_text("tiny text " * 3)
    corpus = make_corpus(store, [str(tmp_path / "d0.txt"), str(tmp_path / "d1.txt")], val_fraction=0.5)
    tok = train_tokenizer_step(store, corpus, 300, progress=False)
    with pytest.raises(HeredityError, match="corpus is too small"):
        pretrain_step(
            store,
            corpus,
            tok,
            PretrainConfig(hidden=32, layers=1, heads=2, intermediate=64, context=64, iters=2),
            progress=False,
        )


# ---- PPO pieces against hand computations --------------------------------------------------------


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.1, 0.2, 9.0]])
    mask = torch.tensor(
        [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    )  # row 2 ends after two tokens: its third entries are padding
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.9)
    # row 1: δ2 = 1 − 0.7 = 0.3; δ1 = 0.7 − 0.6 = 0.1 → A1 = 0.1 + 0.9·0.3; δ0 = 0.6 − 0.5
    # = 0.1 → A0 = 0.1 + 0.9·A1
    a2, a1 = 0.3, 0.1 + 0.9 * 0.3
    a0 = 0.1 + 0.9 * a1
    # row 2: V after the last token is 0: δ1 = 2 − 0.2 = 1.8; δ0 = 0.2 − 0.1 = 0.1 → A0 = 0.1 + 0.9·1.8
    expected = torch.tensor([[a0, a1, a2], [0.1 + 0.9 * 1.8, 1.8, 0.0]])
    assert torch.allclose(adv, expected, atol=1e-6)
    assert torch.allclose(ret, (expected + values) * mask, atol=1e-6)
    # γ discounts: with γ = 0.5, λ = 1 the advantage of the first token is Σ γ^k r − V
    adv2, _ = gae(torch.tensor([[1.0, 1.0, 1.0]]), torch.zeros(1, 3), torch.ones(1, 3), gamma=0.5, lam=1.0)
    assert adv2[0, 0].item() == pytest.approx(1 + 0.5 + 0.25)


def test_clipped_surrogate_matches_a_hand_computation():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]]))  # ratios
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, clipfrac, approx_kl = policy_loss(logp, old, adv, mask, clip=0.2)
    # per token max(−ρA, −clip(ρ)A): ρ=1.5,A=1 → −1.2 (clipped); ρ=0.5,A=1 → −0.5; ρ=0.5,A=−1 → 0.8
    # (clipped); ρ=1.5,A=−1 → 1.5
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / 4, abs=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)
    lr = torch.log(torch.tensor([1.5, 0.5, 0.5, 1.5]))
    assert approx_kl.item() == pytest.approx(float(0.5 * (lr**2).mean()), abs=1e-6)
    # padding does not count
    loss_m, clip_m, _ = policy_loss(logp, old, adv, torch.tensor([[1.0, 1.0, 0.0, 0.0]]), clip=0.2)
    assert loss_m.item() == pytest.approx((-1.2 - 0.5) / 2, abs=1e-6) and clip_m.item() == pytest.approx(0.5)


def test_value_loss_is_clipped_around_the_old_values():
    v, old, ret = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    loss, frac = value_loss(v, old, ret, torch.ones(1, 2), clip=0.2)
    # token 1: (1−0)² = 1 vs clipped (0.2−0)² = 0.04 → 1; token 2: (0−1)² = 1 vs (0−1)² = 1 → 1
    assert loss.item() == pytest.approx(0.5 * (1 + 1) / 2) and frac.item() == 0.0
    v2 = torch.tensor([[0.5, 0.0]])
    loss2, frac2 = value_loss(v2, old, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), clip=0.2)
    # token 1: (0.5−1)² = 0.25 vs clipped (0.2−1)² = 0.64 → 0.64 (the pessimistic one); token 2: 0
    assert loss2.item() == pytest.approx(0.5 * 0.64 / 2) and frac2.item() == pytest.approx(0.5)


def test_kl_penalty_and_token_rewards():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.8]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.8]]))
    k1 = kl_per_token(logp, ref, "k1")
    assert torch.allclose(k1, torch.tensor([[math.log(2), -math.log(2), 0.0]]), atol=1e-6)
    k3 = kl_per_token(logp, ref, "k3")  # (r − 1) − log r with r = π_ref/π
    assert torch.allclose(
        k3, torch.tensor([[(0.5 - 1) - math.log(0.5), (2 - 1) - math.log(2), 0.0]]), atol=1e-6
    )
    assert (k3 >= 0).all()
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    r = token_rewards(torch.tensor([2.0, -1.0]), kl, mask, kl_coef=0.5)
    assert torch.allclose(r, torch.tensor([[-0.05, -0.1, -0.15 + 2.0], [-0.2, -0.25 - 1.0, 0.0]]), atol=1e-6)


def test_advantage_whitening_over_unmasked_entries():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    s = math.sqrt(2 / 3)  # population std of 1, 2, 3
    assert torch.allclose(w, torch.tensor([[-1 / s, 0.0, 1 / s, 0.0]]), atol=1e-4)


def test_batch_layout_left_pads_prompts_and_right_pads_answers():
    ids, att, pos, mask, P = build_batch([[5, 6], [7]], [[8], [9, 10, 11]], pad=0, device="cpu")
    assert P == 2
    assert ids.tolist() == [[5, 6, 8, 0, 0], [0, 7, 9, 10, 11]]
    assert att.tolist() == [[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert pos[1].tolist()[1:] == [0, 1, 2, 3]  # positions count real tokens only
    assert mask.tolist() == [[1, 0, 0], [1, 1, 1]]


def test_answer_logprobs_equal_the_samplers_own(tiny):
    """PPO's re-scoring of a rollout (left-padded prompts, right-padded answers, positions from the mask)
    gives the log-probabilities the sampler drew the tokens with."""
    from heredity.engine.ppo import answer_logprobs
    from heredity.engine.sampling import SampleConfig, render_prompt, sample

    _, _, model, tok = tiny
    prompts = ["hi", "a much longer prompt than the first one"]
    comps = sample(
        model,
        tok,
        prompts,
        SampleConfig(temperature=1.0, max_new_tokens=6, seed=3),
        progress=False,
        top_logprobs=0,
    )
    p_ids = [
        tok(render_prompt(tok, p, SampleConfig()), add_special_tokens=False)["input_ids"] for p in prompts
    ]
    ids, att, pos, mask, P = build_batch(p_ids, [c.token_ids for c in comps], tok.pad_token_id, "cpu")
    with torch.no_grad():
        logp, _ = answer_logprobs(
            model(input_ids=ids, attention_mask=att, position_ids=pos).logits, ids, P, 1.0
        )
    for i, c in enumerate(comps):
        drawn = torch.tensor([lp for lp, _ in c.logprobs])
        assert torch.allclose(logp[i, : len(drawn)], drawn, atol=1e-4), (logp[i], drawn)


def test_reward_scores_do_not_depend_on_batch_padding(tiny):
    from transformers import AutoModelForSequenceClassification

    from heredity.engine.reward import scores_of

    store, aid, _, tok = tiny
    rm = AutoModelForSequenceClassification.from_pretrained(store.path(aid), num_labels=1).eval()
    seqs = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]
    with torch.no_grad():
        batched = scores_of(rm, seqs, tok.pad_token_id, "cpu")
        alone = torch.cat([scores_of(rm, [s], tok.pad_token_id, "cpu") for s in seqs])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_short_ppo_run_raises_a_toy_reward(tiny):
    _, _, model, tok = tiny
    policy, ref = copy.deepcopy(model), copy.deepcopy(model)
    prompts = [f"say {i}" for i in range(20)]

    def reward(ps, answers):  # the count of a target character
        return [a.count("a") / 4 for a in answers]

    cfg = PPOConfig(
        steps=30,
        rollouts=16,
        minibatch=8,
        epochs=4,
        lr=3e-3,
        kl_coef=0.0,
        max_new_tokens=8,
        missing_eos_penalty=None,
    )
    _, m = ppo_train(policy, ref, tok, prompts, reward, cfg, progress=False)
    log = m["log"]
    assert len(log) == 30 and {"score", "kl", "entropy", "clipfrac", "approx_kl", "vf_loss"} <= set(log[0])
    assert m["score_last"] > m["score_first"] + 0.2, [x["score"] for x in log]
    assert log[-1]["kl"] > 0.1  # the policy left the reference to get there (no KL penalty in this run)


def test_kl_penalty_holds_the_policy_near_the_reference(tiny):
    _, _, model, tok = tiny
    prompts = [f"say {i}" for i in range(20)]

    def reward(ps, answers):
        return [a.count("a") / 4 for a in answers]

    kls = {}
    for beta in (0.0, 1.0):
        cfg = PPOConfig(
            steps=20,
            rollouts=16,
            minibatch=8,
            epochs=4,
            lr=3e-3,
            kl_coef=beta,
            kl_estimator="k3",
            max_new_tokens=8,
            missing_eos_penalty=None,
        )
        _, m = ppo_train(
            copy.deepcopy(model), copy.deepcopy(model), tok, prompts, reward, cfg, progress=False
        )
        kls[beta] = m["kl_last"]
    assert kls[1.0] < kls[0.0], kls


# ---- reward model --------------------------------------------------------------------------------


def _put(store, rows, name):
    from heredity.data import put_rows

    return put_rows(store, rows, name)


def test_reward_model_learns_separable_pairs(store):
    base = materialize("tiny:micro", store)
    pairs = [
        {"prompt": f"question {i}?", "chosen": f"yes {i % 7}", "rejected": f"no {i % 5}"} for i in range(60)
    ]
    res = reward_step(
        store,
        base,
        [_put(store, pairs, "separable")],
        RewardConfig(epochs=3, lr=3e-3, batch_size=8),
        progress=False,
    )
    m = res.metrics
    assert m["loss_last"] < m["loss_first"] and m["loss_last"] < 0.3
    assert m["eval_accuracy"] >= 0.9 and m["eval_accuracy"] > m["eval_accuracy_before"]
    assert m["eval_pairs"] > 0 and m["train_pairs"] + m["eval_pairs"] == 60
    assert store.get(res["model"]).meta["head"] == "reward"
    # the lab server lists and serves chat models only: a reward model scores answers, it does not write them
    from heredity.server.runner import ModelNotFound, ModelPool

    pool = ModelPool(store)
    assert res["model"] not in {m["id"] for m in pool.listing()} and base in {m["id"] for m in pool.listing()}
    with pytest.raises(ModelNotFound, match="reward model"):
        pool.resolve(res["model"])
    train, held = split_pairs(normalize_pairs(pairs), 0.2, 0)
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held}


def test_feedback_export_from_the_lab_server_trains_a_reward_model(store):
    """The preference dataset the lab server exports (prompt as chat messages) is reward-model input as is."""
    from heredity.data.feedback import export_feedback
    from heredity.store.conversations import Conversations

    base = materialize("tiny:micro", store)
    convs = Conversations(store)
    for i in range(12):
        c = convs.create(base, system_prompt="Be brief.")
        idx = convs.append(
            c.id,
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": f"capital of land {i}?"},
            ],
            {"role": "assistant", "content": f"I think maybe city {i}, not sure", "model": base},
        )
        convs.feedback(c.id, idx, rating=-1, better=f"City {i}.")
    out = export_feedback(store)
    table_rows = json.loads(
        json.dumps(
            __import__("heredity.store", fromlist=["read_table"])
            .read_table(store.path(out["preferences"]))
            .to_pylist()
        )
    )
    assert len(table_rows) == 12 and isinstance(table_rows[0]["prompt"], list)
    res = reward_step(
        store, base, [out["preferences"]], RewardConfig(epochs=3, lr=3e-3, batch_size=4), progress=False
    )
    assert res.metrics["eval_accuracy"] >= 0.66 and res.metrics["loss_last"] < res.metrics["loss_first"]
    assert out["preferences"] in store.step_of(res["model"]).inputs


def test_reward_data_without_pairs_is_a_clear_error(store):
    base = materialize("tiny:micro", store)
    with pytest.raises(HeredityError, match="needs column"):
        reward_step(
            store, base, [_put(store, [{"prompt": "a", "completion": "b"}], "not-pairs")], progress=False
        )


# ---- built-in instructions and the synthetic preference rule ------------------------------------


def test_instructions_split_train_and_eval_inputs_and_the_rule_ranks_answers():
    for kind in INSTRUCTIONS:
        train = {r["prompt"] for r in instruction_rows([kind], 200, "train", 0)}
        held = {r["prompt"] for r in instruction_rows([kind], 50, "eval", 1)}
        if kind != "sentiment":  # sentiment shares templates on purpose; its subjects differ
            assert not train & held, kind
    assert rule_score("291", "291") == 2 and rule_score("Sure! 291 I hope this helps!", "291") == 1
    assert rule_score("2910", "291") == 0 and rule_score("290", "291") == 0
    rows = instruction_rows(list(INSTRUCTIONS), 5, "train", 0)
    pairs = synthetic_preferences(rows, [["junk", r["completion"]] for r in rows], seed=0)
    assert pairs and all(p["source"] == "synthetic-rule" for p in pairs)
    ref = {r["prompt"]: r["completion"] for r in rows}
    assert all(
        rule_score(p["chosen"], ref[p["prompt"]]) > rule_score(p["rejected"], ref[p["prompt"]]) for p in pairs
    )


# ---- the recipe ----------------------------------------------------------------------------------

TINY = [
    "--set",
    "pretrain.iters=40",
    "--set",
    "pretrain.eval_every=20",
    "--set",
    "pretrain.hidden=32",
    "--set",
    "pretrain.intermediate=64",
    "--set",
    "pretrain.layers=2",
    "--set",
    "vocab_size=400",
    "--set",
    "sft_rows_per_task=20",
    "--set",
    "eval_rows_per_task=4",
    "--set",
    "sft.epochs=1",
    "--set",
    "preference_prompts_per_task=6",
    "--set",
    "rl_prompts_per_task=6",
    "--set",
    "reward.epochs=1",
    "--set",
    "ppo.steps=2",
    "--set",
    "ppo.rollouts=8",
    "--set",
    "trl.steps=2",
    "--set",
    "trl.batch_size=8",
    "--set",
    "samples_shown=3",
]


def _cli(home, *args):
    import os

    env = {**os.environ, "HEREDITY_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "heredity.cli", *args], capture_output=True, text=True, env=env, timeout=900
    )


@pytest.mark.parametrize("rl", ["ppo", "grpo", "dpo"])
def test_chatgpt_recipe_runs_end_to_end(tmp_path, rl):
    home = tmp_path / "home"
    r = _cli(home, "run", "chatgpt", "--set", f"rl={rl}", *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    from heredity.store import Store

    store = Store(home)
    report = next(a for a in store.list("report") if a.name == "chatgpt")
    data = json.loads((report.path / "report.json").read_text())
    md = (report.path / "report.md").read_text()
    assert (report.path / "plot.png").stat().st_size > 10_000
    for section in (
        "## 1–2. Tokenizer and pretraining",
        "## 3. SFT",
        "## 4. Reward model",
        f"## 5. {rl.upper()}",
        "## 6. Win rate and samples",
    ):
        assert section in md
    assert set(data["accuracy"]) == {"pretrained (no SFT)", "SFT", rl.upper()}
    # the headline is the held-out task metric, with intervals that are never a point
    assert data["outcome"].startswith("Held-out exact-match accuracy"), data["outcome"]
    assert (
        md.index("**Outcome.** Held-out exact-match accuracy") < md.index("## Headline") < md.index("## 1–2.")
    )
    for a in data["accuracy"].values():
        for ci in [a["overall"], *a["per_task"].values()]:
            assert ci["n"] > 0 and ci["lo"] < ci["hi"] and ci["lo"] <= ci["mean"] <= ci["hi"], ci
    assert data["accuracy"]["SFT"]["overall"]["n"] == 4 * len(INSTRUCTIONS)
    assert data["tests"]["rl_vs_sft"]["test"] == "McNemar exact" and data["tests"]["rl_vs_sft"][
        "n"
    ] == 4 * len(INSTRUCTIONS)
    # win shares: the training RM's, labelled as such, and an independent judge's beside it
    assert "judged by the training RM" in md and "judged by the judge RM" in md
    for key in ("training_rm", "judge_rm"):
        w = data["win_rate"][key]
        assert w["wins"] + w["ties"] + w["losses"] == w["n"] == 4 * len(INSTRUCTIONS)
        assert w["share"]["n"] == w["wins"] + w["losses"]
        if w["share"]["n"]:
            assert w["share"]["lo"] < w["share"]["hi"]
    assert data["rl"]["log"], "the RL stage logged nothing"
    # the judge: another reward model, from the same SFT model, trained on pairs whose prompts
    # the training RM never saw
    from heredity.store import read_table

    lin = data["lineage"]
    rm_step, judge_step = store.step_of(lin["reward_model"]), store.step_of(lin["judge_reward_model"])
    assert lin["judge_reward_model"] != lin["reward_model"]
    assert (
        rm_step.op == judge_step.op == "reward-model"
        and lin["sft"] in rm_step.inputs
        and lin["sft"] in judge_step.inputs
    )

    def prompts(step):
        return {
            repr(p)
            for d in step.inputs
            if store.get(d).kind == "dataset"
            for p in read_table(store.path(d)).column("prompt").to_pylist()
        }

    rm_prompts, judge_prompts = prompts(rm_step), prompts(judge_step)
    assert rm_prompts and judge_prompts and not rm_prompts & judge_prompts
    (judge_data,) = [d for d in judge_step.inputs if store.get(d).kind == "dataset"]
    split = store.step_of(judge_data)
    assert split.op == "split-preferences" and set(split.outputs.values()) <= {judge_data, *rm_step.inputs}
    assert store.step_of(split.inputs[0]).op == "make-synthetic-preferences"
    rl_inputs = set(store.step_of(lin["rl"]).inputs)
    assert (
        lin["judge_reward_model"] not in rl_inputs and judge_data not in rl_inputs
    )  # the policy never saw the judge
    assert (lin["reward_model"] in rl_inputs) == (rl != "dpo")
    # lineage: the RL model descends from the tokenizer, the corpus, the SFT data and
    # (PPO/GRPO) the reward model
    kinds, ops = set(), set()

    def walk(node):
        kinds.add(node["kind"])
        if node.get("step"):
            ops.add(node["step"]["op"])
        for p in node.get("parents", []):
            walk(p)

    walk(store.lineage(data["lineage"]["rl"]))
    assert {"tokenizer", "dataset", "model"} <= kinds
    assert {"train-tokenizer", "pretrain", "finetune", "make-corpus"} <= ops
    assert ("reward-model" in ops) == (rl != "dpo")


def _fake_results(n_per_task=40):
    """Two tasks × n held-out items for three models: SFT perfect on 'upper' (n/n) and half right on 'larger';
    the RL model loses a third of SFT's correct answers; the training RM prefers every changed RL
    answer, the judge none."""
    tasks = ["upper"] * n_per_task + ["larger"] * n_per_task
    n = len(tasks)
    sft_correct = [1] * n_per_task + [i % 2 for i in range(n_per_task)]
    rl_correct = [0 if c and i % 3 == 0 else c for i, c in enumerate(sft_correct)]
    sft_answers = [f"a{i}" for i in range(n)]
    rl_answers = [a if i % 3 else a + " changed" for i, a in enumerate(sft_answers)]
    noise = [
        1e-7 * (i % 5) for i in range(n)
    ]  # identical answers whose scores differ by float noise are ties

    def res(correct, answers, rewards, judge):
        return {
            "correct": correct,
            "answers": answers,
            "tasks": tasks,
            "rewards": rewards,
            "judge_rewards": judge,
        }

    return {
        "pretrained (no SFT)": res(
            [0] * n, ["?"] * n, [-1.0 + 0.01 * i for i in range(n)], [-1.0 - 0.01 * i for i in range(n)]
        ),
        "SFT": res(
            sft_correct, sft_answers, [0.1 * (i % 7) for i in range(n)], [0.2 * (i % 5) for i in range(n)]
        ),
        "PPO": res(
            rl_correct,
            rl_answers,
            [0.1 * (i % 7) + (1.0 if i % 3 == 0 else noise[i]) for i in range(n)],
            [0.2 * (i % 5) - (1.0 if i % 3 == 0 else noise[i]) for i in range(n)],
        ),
    }


def test_chatgpt_report_leads_with_held_out_accuracy_and_two_judges(tmp_path):
    from heredity.experiments.chatgpt import Config, build_report, markdown, plot

    config = Config(
        base="tiny:micro", instructions=["upper", "larger"], eval_rows_per_task=40, samples_shown=2
    )
    results = _fake_results()
    eval_rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(80)]
    rm = {
        "train_pairs": 100,
        "eval_pairs": 20,
        "optimizer_steps": 4,
        "loss_first": 0.7,
        "loss_last": 0.5,
        "eval_accuracy_before": 0.5,
        "eval_accuracy": 0.8,
        "eval_accuracy_ci": {"n": 20, "k": 16, "mean": 0.8, "lo": 0.58, "hi": 0.92},
        "eval_accuracy_by_kind": {},
        "curve": [[1, 0.7, 0.5], [2, 0.5, 0.8]],
    }
    steps = {
        "sft": {"examples": 10, "optimizer_steps": 1, "loss_first": 1.0, "loss_last": 0.5, "seconds": 1.0},
        "reward": rm,
        "judge": {**rm, "train_pairs": 90},
        "rl": {"log": []},
    }
    report = build_report(config, steps, results, eval_rows, {})
    acc = report["accuracy"]
    for a in acc.values():
        for ci in [a["overall"], *a["per_task"].values()]:
            assert 0 <= ci["lo"] < ci["hi"] <= 1 and ci["lo"] <= ci["mean"] <= ci["hi"], (
                ci
            )  # never "1.00 [1.00, 1.00]"
    assert acc["SFT"]["per_task"]["upper"]["mean"] == 1.0 and acc["SFT"]["per_task"]["upper"]["lo"] < 0.95
    assert (
        acc["pretrained (no SFT)"]["overall"]["mean"] == 0.0
        and acc["pretrained (no SFT)"]["overall"]["hi"] > 0.02
    )
    # SFT → PPO: a paired test over the same items, and a drop is reported as the wrong
    # direction, not as a null
    t = report["tests"]["rl_vs_sft"]
    assert (
        t["n"] == 80
        and t["discordant"] == [0, 20]
        and t["diff"] == pytest.approx(-20 / 80)
        and t["p"] < 0.001
    )
    assert (
        t["verdict"]["result"] == "opposite"
        and report["tests"]["sft_vs_base"]["verdict"]["result"] == "as hypothesised"
    )
    out = report["outcome"]
    assert out.startswith(
        "Held-out exact-match accuracy (80 instructions, greedy): SFT 0.75 [0.65, 0.83] → PPO 0.50 ["
    )
    assert (
        out.index("opposite to the hypothesis")
        < out.index("judged by the training RM")
        < out.index("judged by the judge RM")
    )
    assert (
        "unit: held-out instructions, one trained model per stage, n = 80" in out
        and "one training seed" in out
    )
    # the training RM (circular) sees a win on every changed answer, the independent judge
    # a loss; the rest are ties
    tr, jr = report["win_rate"]["training_rm"], report["win_rate"]["judge_rm"]
    assert (tr["wins"], tr["ties"], tr["losses"]) == (27, 53, 0) and (
        jr["wins"],
        jr["ties"],
        jr["losses"],
    ) == (0, 53, 27)
    assert (
        tr["share"]["mean"] == 1.0
        and tr["share"]["lo"] < tr["share"]["hi"] == 1.0
        and tr["verdict"]["result"] == "as hypothesised"
    )
    assert (
        jr["share"]["mean"] == 0.0
        and jr["share"]["lo"] == 0.0 < jr["share"]["hi"]
        and jr["verdict"]["result"] == "opposite"
    )
    md = markdown(report)
    assert (
        md.index("**Outcome.** Held-out") < md.index("## Headline: held-out accuracy") < md.index("## 3. SFT")
    )
    assert (
        "| SFT | 80 | 60 | 0.750 [" in md
        and "judged by the training RM (the reward PPO optimized: circular) | 27 | 53 | 0 |" in md
    )
    assert "judged by the judge RM (disjoint prompts, never optimized against) | 0 | 53 | 27 |" in md
    assert "[1.00, 1.00]" not in md and "[0.00, 0.00]" not in md
    plot(report, tmp_path / "plot.png")
    # without a judge the report says so instead of leaving the circular number alone unlabelled
    no_judge = {k: {**v, "judge_rewards": None} for k, v in results.items()}
    r2 = build_report(
        config.model_copy(update={"judge_fraction": 0.0}), {**steps, "judge": None}, no_judge, eval_rows, {}
    )
    assert r2["win_rate"]["judge_rm"] is None and "no judge RM" in r2["outcome"]
    assert "not trained (judge_fraction = 0" in markdown(r2)


def test_chatgpt_bad_input_is_one_line(tmp_path):
    r = _cli(tmp_path / "home", "run", "chatgpt", "--set", 'corpus=["/nonexistent/x.txt"]')
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    r = _cli(tmp_path / "home", "run", "chatgpt", "--set", "rl=sac")
    assert r.returncode == 2 and "rl" in r.stderr and "ppo" in r.stderr


def test_sft_rows_from_the_servers_messages_export_and_prompt_completion_files():
    import pyarrow as pa

    from heredity.data.feedback import SFT_SCHEMA
    from heredity.experiments.chatgpt import _uniform, sft_rows_from

    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
    ]
    table = pa.Table.from_pylist(
        [
            {
                "messages": msgs,
                "conversation_id": "c-0",
                "message_idx": 2,
                "model": "m",
                "source": "thumbs-up",
            },
            {"messages": msgs[:2], "conversation_id": "c-1", "message_idx": 1, "model": "m", "source": "x"},
        ],
        schema=SFT_SCHEMA,
    )
    rows = sft_rows_from(table)
    assert rows == [
        {"prompt": msgs[:2], "completion": "Hello."}
    ]  # a conversation not ending in an answer is skipped
    mixed = _uniform(rows + [{"prompt": "plain?", "completion": "yes"}])
    assert mixed[1]["prompt"] == [{"role": "user", "content": "plain?"}]
    assert sft_rows_from(pa.table({"prompt": ["a"], "completion": ["b"]})) == [
        {"prompt": "a", "completion": "b"}
    ]
    with pytest.raises(HeredityError, match="prompt/completion or messages"):
        sft_rows_from(pa.table({"text": ["a"]}))
