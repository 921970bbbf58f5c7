"""The data-quality report card: ``markdown`` (the design, held-out success per arm with its unit, the
declared tests, the judge's raw and length-controlled win rates, what each base inherited from each rule,
what each rule selected, the published anchors) and ``plot``. Rendering only: every number shown is computed
by ``heredity.experiments.data_quality_stats``."""

from __future__ import annotations

from heredity.reports.stats import fmt_ci, fmt_num, fmt_p


def _ci(x: dict) -> str:
    return fmt_ci(x) if x.get("n", 1) else "—"


def markdown(report: dict) -> str:
    ev, pool = report["eval"], report["pool"]
    writers = ", ".join(f"{k} {v:.0%}" for k, v in pool["writers"].items())
    lines = [
        "# data-quality",
        "",
        f"Pool: {pool['rows']} answers to {pool['prompts']} training prompts ({writers}); "
        f"{pool['verified_share']:.0%} of the checkable answers verified right. Held-out set: {ev['graded']} "
        f"graded instructions and {ev['constraints']} constraint prompts ({ev['held_out_pairs']} combine two "
        "kinds never paired in training); greedy answers. Success = exact match on graded items, IFEval "
        "strict on constraint items. Every arm of a base trains for the same number of optimizer steps. A "
        "rate with ≥ 2 training seeds is a mean over seeds (t interval; unit: training seeds), with one seed "
        "a rate over items (Wilson; unit: items, one trained model).",
        "",
    ]
    for base, rows in report["arms"].items():
        lines += [
            f"## {base}",
            "",
            "| arm | seeds | success | exact | strict | loose | words | distinct-2 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for label, r in rows.items():
            lines.append(
                f"| {label} | {r['seeds']} | {_ci(r['success'])} | {_ci(r['exact'])} | {_ci(r['strict'])} | "
                f"{_ci(r['loose'])} | {r['words']:.1f} | {fmt_num(r['distinct2'], 3)} |"
            )
        lines += ["", *_judge(report["judge"].get(base, {})), *_selected(rows)]
    lines += _tests(report["tests"])
    lines += _rms(report["reward_models"])
    lines += [
        "## Published anchors",
        "",
        "| source | finding |",
        "|---|---|",
        *[f"| {p['source']} | {p['finding']} |" for p in report["published"]],
        "",
        "Our bases are a few-million-parameter model pretrained on Python's documentation and a 135M "
        "instruction-tuned model, our pool a few thousand templated rows: the anchors give the direction to "
        "compare, not a scale.",
        "",
        f"**Outcome.** {report['outcome']}",
        "",
    ]
    return "\n".join(lines)


def _judge(judges: dict) -> list[str]:
    if not judges:
        return []
    lines = [
        "Against the random arm at the same N, judged by the judge RM (never used to select; ties count "
        "half): win rate, length-controlled win rate (logistic fit on the squashed length difference, read "
        "at equal length), answer-length drift in words, and the selection RM's taste (its standardized "
        "score gain minus the judge's). Percentile bootstrap over items (unit: items; an item's seeds "
        "resampled together); descriptive, outside the Holm family.",
        "",
        "| arm | win rate | LC win rate | length drift (words) | taste | distinct-2 (random) |",
        "|---|---|---|---|---|---|",
    ]
    for label, j in judges.items():
        lines.append(
            f"| {label} | {fmt_ci(j['win_rate'])} | {fmt_ci(j['lc_win_rate'])} | "
            f"{fmt_ci(j['length_drift'], 1)} | {fmt_ci(j['taste'], 2)} | "
            f"{fmt_num(j['distinct2'], 3)} ({fmt_num(j['distinct2_random'], 3)}) |"
        )
    return [*lines, ""]


def _selected(rows: dict) -> list[str]:
    lines = [
        "What each rule selected (first seed's draw):",
        "",
        "| arm | rows | mean characters | verified right | constraint prompts | writers |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        s = r.get("selected")
        if not s:
            continue
        ver = "—" if s["verified_share"] is None else f"{s['verified_share']:.0%}"
        writers = ", ".join(f"{k} {v:.0%}" for k, v in s["writers"].items())
        lines.append(
            f"| {label} | {s['rows']} | {s['mean_chars']:.0f} | {ver} | {s['constraint_share']:.0%} | "
            f"{writers} |"
        )
    return [*lines, ""]


def _tests(tests: list[dict]) -> list[str]:
    if not tests:
        return []
    m = len(tests)
    lines = [
        f"## The declared tests (one Holm family of {m}, declared in the config)",
        "",
        "Held-out success, arm a − arm b; a Welch t over training seeds where both arms have ≥ 2 (unit: "
        "training seeds, a claim about the rule), McNemar's exact test over items where they have one (unit: "
        "items, a claim about the two trained models). For a null, the smallest difference the test detects "
        f"with 80% power at the α its verdict uses (0.05 / {m}).",
        "",
        "| test | a | b | Δ [95% interval] | p | Holm p | unit | verdict | smallest detectable |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in tests:
        d = {"mean": t["diff"], "lo": t["lo"], "hi": t["hi"]}
        mde = t.get("min_detectable")
        lines.append(
            f"| {t['name']} | {fmt_num(t['mean_a'])} | {fmt_num(t['mean_b'])} | {fmt_ci(d)} | "
            f"{fmt_p(t['p'])} | {fmt_p(t['p_holm'])} | {t['unit']} | {t['verdict']['words']} | "
            f"{'—' if mde is None else fmt_num(mde)} |"
        )
    return [*lines, ""]


def _rms(rm: dict) -> list[str]:
    pairs = rm["pairs"]
    out = [
        "## Reward models",
        "",
        "The chatgpt pipeline's recipe over the tiny base; synthetic pairs from the pool's prompts, split "
        f"by prompt: {pairs['selection_pairs']} for the selection RM, {pairs['judge_pairs']} for the judge "
        "RM.",
        "",
    ]
    for role in ("selection", "judge"):
        acc = rm[role].get("eval_accuracy")
        out.append(f"- {role} RM: held-out pairwise accuracy {fmt_num(acc)} (unit: held-out pairs).")
    return [*out, ""]


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bases = list(report["arms"])
    fig, axes = plt.subplots(1, len(bases), figsize=(6 * len(bases), 4.2), squeeze=False)
    for ax, base in zip(axes[0], bases, strict=True):
        rows = report["arms"][base]
        by_rule: dict[str, list[tuple[int, dict]]] = {}
        for label, r in rows.items():
            rule, _, n = label.partition("@")
            if n:
                by_rule.setdefault(rule, []).append((int(n), r["success"]))
        for rule, pts in sorted(by_rule.items()):
            pts.sort()
            xs = [p[0] for p in pts]
            ys = [p[1]["mean"] for p in pts]
            err = [
                [max(0.0, p[1]["mean"] - p[1]["lo"]) if p[1]["lo"] is not None else 0 for p in pts],
                [max(0.0, p[1]["hi"] - p[1]["mean"]) if p[1]["hi"] is not None else 0 for p in pts],
            ]
            ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, label=rule)
        for label, style in (("all", "--"), ("base (no fine-tune)", ":")):
            if label in rows and rows[label]["success"]["mean"] is not None:
                ax.axhline(rows[label]["success"]["mean"], ls=style, color="grey", lw=1, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("N (selected training rows)")
        ax.set_ylabel("held-out success")
        ax.set_title(base)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
