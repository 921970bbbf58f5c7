"""The self-training report rendered: ``markdown(report)`` and ``plot(report, path)`` (read from the report
JSON alone; ``experiments.self_training`` computes it)."""

from __future__ import annotations


def _label(x) -> str:
    return "base" if x[0] == "base" else f"{x[0]} r{x[1]}"


def _find(r: dict, a: str, b: str) -> dict | None:
    return next((c for c in r.get("comparisons", []) if c["a"][0] == a and c["b"][0] == b), None)


# published figures (the papers' scale, models and benchmarks) and which of our comparisons maps to each
ANCHORS = [
    (
        "ReST-EM vs SFT on human solutions, MATH (Singh et al.)",
        "+5.94 points (PaLM 2-S), +6.34 (PaLM 2-L)",
        ("rest_em", "sft_gold"),
    ),
    ("ReST-EM vs SFT on human solutions, APPS", "+5.6 / +6.4 points", ("rest_em", "sft_gold")),
    (
        "three iterations vs one iteration with 3× the samples",
        "three iterations better",
        ("rest_em", "compute_matched"),
    ),
    (
        "ReST-EM after iteration 1 on APPS",
        "train accuracy rises, test stalls (overfitting)",
        ("rest_em", "rest_em"),
    ),
    ("STaR vs direct fine-tuning, CommonsenseQA (Zelikman et al.)", "72.3% vs 60.0%", ("star", "sft_gold")),
    ("RFT (Yuan et al.)", "gains track the number of distinct reasoning paths", ("rft", "base")),
]


def markdown(r: dict) -> str:
    lines = _methods(r) + _accuracy(r) + _kept(r)
    if r.get("comparisons"):
        lines += _comparisons(r) + _anchors(r)
    lines += ["", f"**Outcome.** {r['outcome']}.", "", f"Run time {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _rate(x) -> str:
    return f"{x['mean']:.2f} [{x['lo']:.2f}, {x['hi']:.2f}]"


def _methods(r: dict) -> list[str]:
    c = r["config"]
    made = (
        f"from {c['problems_file']}"
        if c.get("problems_file")
        else f"(levels {c['levels']} steps, {c['digits']}-digit numbers)"
    )
    return [
        "# self-training",
        "",
        f"Base {c['base']}; {r['problems']['train']} train problems {made}, {r['problems']['test']} test"
        + ("" if c.get("problems_file") else f" ({c['test_steps']} steps)")
        + f", {r['problems']['ood']} out of distribution; {c['samples']} samples per problem per round at "
        f"T = {c['temperature']}, ≤ {c['keep']} distinct "
        f"verified kept; {c['shots']} worked examples in every sampling and evaluation prompt, "
        f"{c.get('train_shots', 0)} in the fine-tuning rows (problem → solution); "
        f"LoRA r = {c['finetune']['lora_r']}, "
        f"{c['finetune']['epochs']} epochs, lr {c['finetune']['lr']}; unit of every interval: problems (one "
        "trained "
        "model per arm and round).",
        "",
    ]


def _accuracy(r: dict) -> list[str]:
    c = r["config"]
    lines = [
        "## Accuracy per arm and round",
        "",
        "| arm | round | greedy test [95% Wilson] | greedy ood | greedy train | "
        + " | ".join(f"pass@{k}" for k in c["ks"])
        + " | majority vote |",
        "|" + "---|" * (6 + len(c["ks"])),
    ]
    for arm, rs in r["results"].items():
        for x in rs:
            e = x.get("eval")
            if e is None:
                lines.append(
                    f"| {arm} | {x['round']} | nothing verified: the chain stopped |"
                    + " |" * (3 + len(c["ks"]))
                )
                continue
            ood = _rate(e["greedy_ood"]) if "greedy_ood" in e else "—"
            lines.append(
                f"| {arm} | {x['round']} | {_rate(e['greedy_test'])} | {ood} | {_rate(e['greedy_train'])} | "
                + " | ".join(_rate(e[f"pass@{q}"]) if f"pass@{q}" in e else "—" for q in c["ks"])
                + f" | {_rate(e['majority_vote'])} |"
            )
    return lines + [
        "",
        "pass@k: the unbiased estimator (Chen et al. 2021) from "
        f"{c['eval_samples']} samples per test problem, 95% bootstrap interval over problems.",
        "",
    ]


def _kept(r: dict) -> list[str]:
    lines = [
        "## What each round keeps (the verified training set)",
        "",
        "| arm | round | rows | problems with one | distinct per problem | share kept by level (steps) | "
        "mean kept answer (chars) | mean test answer (chars) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, rs in r["results"].items():
        for x in rs:
            k, e = x.get("kept"), x.get("eval") or {}
            if not k:
                continue
            share = ", ".join(f"{lvl}: {v:.2f}" for lvl, v in k["share_kept_by_level"].items())
            rat = f" (+{k['rationalized_rows']} rationalized)" if "rationalized_rows" in k else ""
            kc = f"{k['mean_answer_chars']:.0f}" if k.get("mean_answer_chars") is not None else "—"
            ec = f"{e['answer_chars']:.0f}" if e.get("answer_chars") is not None else "—"
            lines.append(
                f"| {arm} | {x['round']} | {k['rows']}{rat} | {k['problems_with_any']}/{k['problems']} | "
                f"{k['distinct_per_problem']:.2f} | {share} | {kc} | {ec} |"
            )
    return lines


def _comparisons(r: dict) -> list[str]:
    from heredity.reports.stats import fmt_test, verdict

    lines = [
        "",
        "## Planned comparisons (greedy test accuracy; paired over the same test problems)",
        "",
        "| a | b | a − b [95% Newcombe], McNemar exact | discordant (a only, b only) | reading (Holm) |",
        "|---|---|---|---|---|",
    ]
    for x in r["comparisons"]:
        t = x["test"]
        lines.append(
            f"| {_label(x['a'])} | {_label(x['b'])} | {fmt_test(t, 2, p=x['p_holm'])} | "
            f"{t['discordant'][0]}, {t['discordant'][1]} | {verdict(t, 1, p=x['p_holm'])['words']} |"
        )
    return lines + [
        "",
        "Unit: test problems, one trained model per arm and round (one training seed): these are claims "
        "about these models; a claim about the methods needs training seeds.",
    ]


def _anchors(r: dict) -> list[str]:
    """Our comparison beside each published figure it maps to."""
    from heredity.reports.stats import fmt_test

    lines = [
        "",
        "## Beside the published figures",
        "",
        "| published | their figure | ours (same comparison) |",
        "|---|---|---|",
    ]
    for what, fig, (a, b) in ANCHORS:
        if a == b == "rest_em":
            rs = r["results"].get("rest_em") or []
            ours = (
                "; ".join(
                    f"r{x['round']}: train {x['eval']['greedy_train']['mean']:.2f}, test "
                    f"{x['eval']['greedy_test']['mean']:.2f}"
                    for x in rs
                    if x.get("eval")
                )
                or "not run"
            )
        elif a == "rft":
            rs, x = r["results"].get("rft") or [], _find(r, "rft", "base")
            ours = (
                f"distinct per problem {rs[0]['kept']['distinct_per_problem']:.2f}; {fmt_test(x['test'], 2)}"
                if rs and rs[0].get("eval") and x
                else "not run"
            )
        else:
            x = _find(r, a, b)
            ours = (
                f"{x['test']['diff'] * 100:+.1f} points [{x['test']['lo'] * 100:+.1f}, "
                f"{x['test']['hi'] * 100:+.1f}], Holm p = {x['p_holm']:.2g}"
                if x
                else "not run"
            )
        lines.append(f"| {what} | {fig} | {ours} |")
    return lines


def plot(r: dict, path) -> None:
    """Three panels: greedy test accuracy by round, pass@k curves of each arm's last model, and distinct
    verified solutions kept per problem by round (the diversity the next model inherits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(13, 3.8))
    for arm, rs in r["results"].items():
        pts = [(x["round"], x["eval"]["greedy_test"]) for x in rs if x.get("eval")]
        if pts:
            ax.errorbar(
                [p[0] for p in pts],
                [p[1]["mean"] for p in pts],
                yerr=[[p[1]["mean"] - p[1]["lo"] for p in pts], [p[1]["hi"] - p[1]["mean"] for p in pts]],
                marker="o",
                capsize=3,
                label=arm,
            )
            curve = (rs[-1].get("eval") or {}).get("pass_curve")
            if curve:
                bx.plot(
                    [int(k) for k in curve],
                    list(curve.values()),
                    marker="o",
                    label=f"{arm} r{rs[-1]['round']}",
                )
        div = [(x["round"], x["kept"]["distinct_per_problem"]) for x in rs if x.get("kept")]
        if div:
            cx.plot([d[0] for d in div], [d[1] for d in div], marker="o", label=arm)
    ax.set(xlabel="round", ylabel="greedy test accuracy (95% Wilson)", ylim=(0, 1))
    bx.set(xlabel="k", ylabel="pass@k on test (unbiased)", ylim=(0, 1))
    bx.set_xscale("log", base=2)
    cx.set(
        xlabel="round",
        ylabel="distinct verified solutions kept per problem",
        ylim=(0, r["config"]["keep"] + 0.2),
    )
    for a in (ax, bx, cx):
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
