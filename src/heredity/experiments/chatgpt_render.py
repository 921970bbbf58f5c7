"""The chatgpt experiment's report card: ``markdown`` (headline first, then one section per stage of the
recipe) and ``plot``. Rendering only: every number shown is computed by ``heredity.experiments.chatgpt``."""

from __future__ import annotations

import json

from heredity.reports.card import yerr
from heredity.reports.stats import fmt_ci, fmt_test

# what the training RM is to the policy, per RL method (the outcome line names it too)
TRAINING_RM = {
    "ppo": "the reward PPO optimized: circular",
    "grpo": "the reward GRPO optimized: circular",
    "dpo": "trained on the same pairs DPO trained on",
}


def markdown(report: dict) -> str:
    lines = ["# The ChatGPT recipe: report card", "", f"**Outcome.** {report['outcome']}.", ""]
    lines += headline(report)
    lines += _pretraining_section(report)
    lines += _sft_section(report)
    lines += _reward_section(report)
    lines += _rl_section(report)
    lines += _samples_section(report)
    lines += ["", f"Run time {report.get('seconds', 0):.0f} s.", ""]
    return "\n".join(lines)


def headline(report: dict) -> list[str]:
    """The held-out task metric first, then the win shares, each beside its unit and n."""
    rl = report["config"]["rl"].upper()
    lines = [
        "## Headline: held-out accuracy",
        "",
        "Exact match of the first line of the greedy answer to held-out instructions, 95% Wilson intervals:",
        "",
        "| model | n | correct | accuracy [95% CI] |",
        "|---|---|---|---|",
    ]
    for label, a in report["accuracy"].items():
        o = a["overall"]
        lines.append(f"| {label} | {o['n']} | {o['k']} | {fmt_ci(o, 3)} |")
    lines += [
        "",
        "Changes, paired over the same held-out instructions (exact McNemar test, Newcombe interval of the "
        "difference in accuracy; hypothesis: each stage raises accuracy):",
        "",
    ]
    for t in report["tests"].values():
        lines.append(f"- {t['a']} − {t['b']}: {fmt_test(t)}: **{t['verdict']['words']}**.")
    lines += [
        "",
        f"{rl} vs SFT win share on held-out prompts: a win is a higher reward for the {rl} answer; a tie "
        "(the same answer or an equal reward) carries no preference and is set aside; win share = wins / "
        "(wins + losses) with a 95% Wilson interval; exact two-sided sign test, Δ = (wins − losses) / n.",
        "",
        "| judge | wins | ties | losses | win share [95% CI] | sign test |",
        "|---|---|---|---|---|---|",
    ]
    lines += _win_rows(report)
    lines += [
        "",
        "One trained model per stage from one training seed: every interval and p-value here is over "
        "held-out items (instructions, prompts) and describes these trained models, not what the recipe "
        "does in general.",
        "",
    ]
    return lines


def _win_rows(report: dict) -> list[str]:
    """The headline's win-share table rows, one per judge (a judge not trained says so)."""
    cfg = report["config"]
    names = {
        "training_rm": f"judged by the training RM ({TRAINING_RM[cfg['rl']]})",
        "judge_rm": "judged by the judge RM (disjoint prompts, never optimized against)",
    }
    lines = []
    for key, w in report["win_rate"].items():
        if w is None:
            lines.append(
                f"| {names[key]} | — | — | — | not trained (judge_fraction = 0 or no synthetic pairs) | — |"
            )
            continue
        lines.append(
            f"| {names[key]} | {w['wins']} | {w['ties']} | {w['losses']} | {fmt_ci(w['share'], 3)} | "
            f"{fmt_test(w['test'])}: {w['verdict']['words']} |"
        )
    return lines


def _pretraining_section(report: dict) -> list[str]:
    """1–2: the tokenizer and the pretraining run (loss table, nanoGPT reference, samples), or that it was
    skipped."""
    cfg = report["config"]
    pre = report.get("pretrain")
    if not pre:
        return ["## 1–2. Pretraining", "", f"Skipped: starting from {cfg['base']}.", ""]
    p = cfg["pretrain"]
    tk = report.get("tokenizer") or {}
    corpus = "pydoc_data.topics" if not cfg["corpus"] else ", ".join(cfg["corpus"])
    lines = [
        "## 1–2. Tokenizer and pretraining",
        "",
        f"Byte-level BPE, {tk.get('vocab_size')} tokens ({tk.get('chars_per_token')} characters per token on "
        f"the training documents). Llama architecture from scratch: {p['layers']} layers, "
        f"{p['heads']} heads, {p['hidden']} wide, context {p['context']}, batch {p['batch_size']}, "
        f"{p['iters']} iterations, lr {p['lr']} → {p['min_lr']} (cosine); {pre['parameters']:,} parameters; "
        f"corpus {corpus} "
        f"({pre['corpus_train_tokens']:,} train / {pre['corpus_val_tokens']:,} val tokens, whole documents "
        "held out).",
        "",
        "| iteration | train loss | val loss | val perplexity |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {e['iter']} | {e['train_loss']:.3f} | {e['val_loss']:.3f} | {e['val_perplexity']:.1f} |"
        for e in pre["evals"]
    ]
    nano = report["nanogpt"]
    lines += [
        "",
        f"Validation: {pre['val_loss']:.3f} nats/token = **{pre['val_nats_per_char']:.3f} nats/character**, "
        f"{pre['train_seconds']:.0f} s of training at {pre['tokens_per_second']:,.0f} tokens/s on "
        f"{pre['device']}" + (f", MFU {pre['mfu']:.1%}" if pre.get("mfu") else "") + ".",
        f"Reference: {nano['setting']} reaches {nano['val_loss_nats_per_char']} nats/character "
        f"in ~{nano['minutes']} minutes on a laptop — same budget, different corpus (Shakespeare vs "
        "Python documentation), so the figures place ours, they do not rank it.",
        "",
    ]
    last = pre["samples"][-1]
    lines += [f"Samples at iteration {last['iter']} (temperature 0.8):", ""]
    lines += [f"- `{k!s}` → {json.dumps(v)[:300]}" for k, v in last["samples"].items()]
    lines.append("")
    return lines


def _sft_section(report: dict) -> list[str]:
    """3: the SFT run and every stage's held-out accuracy per instruction kind, with mean rewards."""
    cfg = report["config"]
    sft = report["sft"]
    kinds = cfg["instructions"]
    lines = [
        "## 3. SFT",
        "",
        f"{sft['examples']} examples, {cfg['sft']['method']} fine-tune, completion-only loss, "
        f"{sft['optimizer_steps']} steps (loss {sft['loss_first']:.3f} → {sft['loss_last']:.3f}, "
        f"{sft['seconds']:.0f} s). Held-out instructions, greedy decoding, exact match of the first line; "
        "accuracy [95% Wilson interval]; mean reward [95% t interval] under the training RM and the judge "
        "RM.",
        "",
        "| model | " + " | ".join(kinds) + " | overall | mean reward, training RM | mean reward, judge RM |",
        "|---|" + "---|" * (len(kinds) + 3),
    ]
    for label, a in report["accuracy"].items():
        jr = fmt_ci(a["mean_judge_reward"], 2) if a.get("mean_judge_reward") else "—"
        lines.append(
            f"| {label} | "
            + " | ".join(fmt_ci(a["per_task"][t], 2) for t in kinds)
            + f" | {fmt_ci(a['overall'], 2)} | {fmt_ci(a['mean_reward'], 2)} | {jr} |"
        )
    lines += ["", f"n = {cfg['eval_rows_per_task']} per instruction kind.", ""]
    return lines


def _reward_section(report: dict) -> list[str]:
    """4: the training RM (its pairs, loss, held-out pairwise accuracy), the judge RM, accuracy by pair
    kind."""
    cfg = report["config"]
    rl = cfg["rl"].upper()
    rm = report["reward"]
    source = (
        "synthetic rule: correct-and-concise > correct-but-wordy > wrong, over the SFT model’s own samples + "
        "reference answers"
        if cfg["synthetic_preferences"]
        else "user data"
    )
    also = " + user data" if cfg["preference_data"] and cfg["synthetic_preferences"] else ""
    lines = [
        "## 4. Reward model",
        "",
        f"Bradley–Terry on {rm['train_pairs']} pairs ({source}{also}), {rm['optimizer_steps']} steps, "
        f"loss {rm['loss_first']:.3f} → {rm['loss_last']:.3f}. Held-out pairwise accuracy "
        f"({rm['eval_pairs']} pairs of unseen prompts): {rm['eval_accuracy_before']:.2f} before training → "
        f"**{fmt_ci(rm['eval_accuracy_ci'], 2)}** after (95% Wilson interval over the "
        f"{rm['eval_accuracy_ci']['n']} non-tied pairs; a tie counts half in the point figure "
        f"{rm['eval_accuracy']:.2f}). This is the **training RM**: "
        + (f"{rl} optimizes it" if cfg["rl"] != "dpo" else "DPO trains on its pairs")
        + ".",
        "",
    ]
    judge = report.get("judge")
    if judge:
        lines += [
            f"**Judge RM.** The same recipe, initialized from the same SFT model, trained on the other "
            f"{cfg['judge_fraction']:.0%} of the synthetic prompts ({judge['train_pairs']} pairs; no prompt "
            f"shared with the training RM's pairs; the policy never saw it): held-out pairwise accuracy "
            f"{judge['eval_accuracy_before']:.2f} → **{fmt_ci(judge['eval_accuracy_ci'], 2)}** "
            f"({judge['eval_pairs']} pairs of unseen prompts).",
            "",
        ]
    by_kind = [("training RM", rm)] + ([("judge RM", judge)] if judge else [])
    if rm.get("eval_accuracy_by_kind"):
        lines += ["| held-out pairs | RM | n | accuracy |", "|---|---|---|---|"]
        lines += [
            f"| {k} | {who} | {v['n']} | {v['accuracy']:.2f} |"
            for who, m in by_kind
            for k, v in (m.get("eval_accuracy_by_kind") or {}).items()
        ]
        lines.append("")
    return lines


def _rl_section(report: dict) -> list[str]:
    """5: the RL run: PPO's settings and a thinned log, or TRL's (GRPO / DPO)."""
    cfg = report["config"]
    lines = [f"## 5. {cfg['rl'].upper()}", ""]
    log = report["rl"].get("log") or []
    if cfg["rl"] == "ppo" and log:
        lines += _ppo_log(report, log)
    elif log:
        lines += _trl_log(report, log)
    return lines


def _ppo_log(report: dict, log: list[dict]) -> list[str]:
    p = report["config"]["ppo"]
    rl = report["rl"]
    lines = [
        f"{p['steps']} iterations × {p['rollouts']} rollouts, {p['epochs']} epochs of minibatch "
        f"{p['minibatch']}, lr {p['lr']}, β = {p['kl_coef']} (per-token KL to the SFT model), "
        f"ε = {p['clip']}, GAE γ = {p['gamma']} λ = {p['lam']}; {rl['seconds']:.0f} s. Mean RM score over "
        f"the first fifth of the iterations {rl['score_first']:.3f} → last fifth {rl['score_last']:.3f} "
        f"(KL {rl['kl_last']:.2f} "
        "nats per answer).",
        "",
        "| iteration | RM score | KL | entropy | clip fraction | approx. KL | answer tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    every = max(1, len(log) // 10)
    for x in log[::every] + ([log[-1]] if (len(log) - 1) % every else []):
        lines.append(
            f"| {x['step']} | {x['score']:.3f} | {x['kl']:.3f} | {x['entropy']:.3f} | {x['clipfrac']:.3f} | "
            f"{x['approx_kl']:.4f} | {x['answer_tokens']:.1f} |"
        )
    return lines


def _trl_log(report: dict, log: list[dict]) -> list[str]:
    cfg = report["config"]
    rl = cfg["rl"].upper()
    keys = [k for k in log[-1] if k != "step"]
    t = cfg["trl"]
    what = (
        f"{t['batch_size'] // t['num_generations']} prompts × {t['num_generations']} answers per step, "
        f"KL coefficient β = {t['beta']}"
        if cfg["rl"] == "grpo"
        else f"{t['batch_size']} pairs per step, β = {t['beta']}"
    )
    lines = [
        f"TRL's {rl}Trainer: {t['steps']} steps, {what}, lr {t['lr']}; "
        f"{report['rl'].get('seconds', 0):.0f} s. Log (every few steps):",
        "",
        "| step | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    every = max(1, len(log) // 10)
    lines += [
        f"| {x['step']} | " + " | ".join(f"{x.get(k, float('nan')):.4g}" for k in keys) + " |"
        for x in log[::every]
    ]
    return lines


def _cell(x) -> str:
    """A prompt or an answer (text, or a message list's last turn) as one short table cell."""
    return json.dumps(x if isinstance(x, str) else x[-1]["content"])[1:-1].replace("|", "\\|")[:80]


def _rewards_of(s: dict, who: str) -> str:
    """An answer's reward under the training RM (and the judge RM when there is one)."""
    return f"{s[who + '_reward']:+.2f}" + (f" / {s[who + '_judge']:+.2f}" if who + "_judge" in s else "")


def _samples_section(report: dict) -> list[str]:
    """6: where the win rate is (the headline) and sampled answers of SFT and the RL model, with rewards."""
    rl = report["config"]["rl"].upper()
    judged = bool(report["win_rate"].get("judge_rm"))
    lines = [
        "",
        "## 6. Win rate and samples",
        "",
        f"{rl} vs SFT on {report['win_rate']['training_rm']['n']} held-out prompts (greedy answers): see the "
        "headline table — the training RM's verdict is not independent of the policy's training, the judge "
        "RM's is. Samples, with each answer's reward "
        + ("(training RM / judge RM):" if judged else "(training RM):"),
        "",
        f"| prompt | reference | SFT (reward) | {rl} (reward) |",
        "|---|---|---|---|",
    ]
    for s in report["samples"]:
        lines.append(
            f"| {_cell(s['prompt'])} | {_cell(s['reference'])} | "
            f"{_cell(s['sft'])} ({_rewards_of(s, 'sft')}) | {_cell(s['rl'])} ({_rewards_of(s, 'rl')}) |"
        )
    return lines


# ---- the plot ------------------------------------------------------------------------------------


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    a, b, c, d = axes
    _plot_pretraining(a, report)
    _plot_reward(b, report)
    _plot_rl(c, report)
    _plot_accuracy(d, report)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(v: list[float], w: int = 10) -> list[float]:
    """A trailing mean over ``w`` points."""
    return [sum(v[max(0, i - w + 1) : i + 1]) / len(v[max(0, i - w + 1) : i + 1]) for i in range(len(v))]


def _plot_pretraining(a, report: dict) -> None:
    pre = report.get("pretrain")
    if not pre:
        a.set_axis_off()
        return
    curve = pre["loss_curve"]
    a.plot([x[0] for x in curve], [x[1] for x in curve], lw=0.6, alpha=0.6, label="train (batch)")
    a.plot([e["iter"] for e in pre["evals"]], [e["val_loss"] for e in pre["evals"]], "o-", label="validation")
    a.set_xlabel("iteration")
    a.set_ylabel("loss (nats/token)")
    a.set_title("Pretraining")
    a.legend(fontsize=8)


def _plot_reward(b, report: dict) -> None:
    rm = report["reward"]["curve"]
    b.plot([x[0] for x in rm], [x[1] for x in rm], lw=0.8, label="Bradley–Terry loss")
    b.axhline(0.6931, ls=":", color="gray", label="log 2 (chance)")
    b.set_xlabel("step")
    b.set_title(f"Reward model (held-out acc. {report['reward']['eval_accuracy']:.2f})")
    b.legend(fontsize=8)


def _plot_rl(c, report: dict) -> None:
    """PPO: RM score and KL to SFT per iteration (smoothed); TRL: its reward, margin or loss."""
    log = report["rl"].get("log") or []
    rl = report["config"]["rl"].upper()
    if log and "score" in log[0]:
        steps_ = [x["step"] for x in log]
        c.plot(steps_, [x["score"] for x in log], lw=0.6, alpha=0.35, color="#2563eb")
        c.plot(
            steps_, _smooth([x["score"] for x in log]), lw=2, color="#2563eb", label="RM score (10-step mean)"
        )
        c2 = c.twinx()
        c2.plot(
            steps_, _smooth([x["kl"] for x in log]), lw=2, color="#d97706", label="KL to SFT (10-step mean)"
        )
        c2.set_ylabel("KL (nats/answer)", color="#d97706")
        c.set_ylabel("mean RM score", color="#2563eb")
    elif log:
        key = next((k for k in ("reward", "rewards_margins", "loss") if k in log[-1]), None)
        if key:
            pts = [(x["step"], x[key]) for x in log if key in x]
            c.plot([a for a, _ in pts], [b for _, b in pts], lw=0.6, alpha=0.35, color="#2563eb")
            c.plot(
                [a for a, _ in pts],
                _smooth([b for _, b in pts]),
                lw=2,
                color="#2563eb",
                label=f"{key} (10-step mean)",
            )
            c.set_ylabel(key)
            c.legend(fontsize=8)
    c.set_xlabel(f"{rl} step")
    c.set_title(f"{rl}")


def _plot_accuracy(d, report: dict) -> None:
    rl = report["config"]["rl"].upper()
    labels = list(report["accuracy"])
    cis = [report["accuracy"][k]["overall"] for k in labels]
    d.bar(
        range(len(labels)),
        [c["mean"] for c in cis],
        yerr=yerr(cis),
        color=["#94a3b8", "#2563eb", "#059669"],
        capsize=4,
    )
    d.set_xticks(range(len(labels)), labels, fontsize=8)
    d.set_ylim(0, 1)
    d.set_ylabel("held-out accuracy (95% Wilson)")
    wr = report["win_rate"]
    shares = f"training RM {fmt_ci(wr['training_rm']['share'], 2)}" + (
        f"\njudge RM {fmt_ci(wr['judge_rm']['share'], 2)}" if wr.get("judge_rm") else ""
    )
    d.set_title(f"Held-out accuracy; {rl} win share\n{shares}", fontsize=9)
