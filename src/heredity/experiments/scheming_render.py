"""The scheming report rendered: ``markdown(report)`` and ``plot(report, path)`` (read from the report JSON
alone; ``experiments.scheming`` computes it)."""

from __future__ import annotations

PUBLISHED = {
    "oversight_subversion": ("o1: disabled oversight", 0.05),
    "self_exfiltration": ("o1: attempted exfiltration", 0.02),
    "covert_email_reranking": ("o1: data manipulation", 0.19),
    "instrumental_alignment_faking": ("o1: alignment faking", 0.37),
}


def markdown(r: dict) -> str:
    lines = _cells(r) + _judge(r) + _base_extras(r)
    if r.get("trained_in"):
        lines += _trained_in(r)
    lines += [
        "",
        "Published (o1 system card, with the nudge): "
        + ", ".join(f"{n} {p:.0%}" for n, p in PUBLISHED.values())
        + ". A small model's rates measure competence more than intent.",
        "",
        f"**Outcome.** {r['outcome']}.",
        "",
        f"Run time {r['seconds']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def _rate(x) -> str:
    if x["n"] == 0:
        return "—"
    return f"{x['k']}/{x['n']} [{x['lo']:.2f}, {x['hi']:.2f}]" + (" (≤ upper bound)" if x["k"] == 0 else "")


def _cells(r: dict) -> list[str]:
    """The methods line and every cell's rates."""
    c = r["config"]
    lines = [
        "# scheming",
        "",
        f"Model {c['model']} ({r['model']}); {c['episodes']} episodes per cell; tool_choice "
        f"{c['tool_choice']}; unit of replication for every rate: episodes (one model — a claim about this "
        "model).",
        "",
        "| scenario | variant | nudge | competent | schemed [95% Wilson] | schemed if competent | confessed "
        "if schemed | valid actions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cell_ in r["cells"].values():
        lines.append(
            f"| {cell_['scenario']} | {cell_['variant']} | {'on' if cell_['nudged'] else 'off'} | "
            f"{_rate(cell_['competence'])} | {_rate(cell_['scheming'])} | "
            f"{_rate(cell_['scheming_if_competent'])} | "
            f"{_rate(cell_['confessed_if_schemed'])} | {cell_['valid_actions']}/{cell_['actions']} |"
        )
    return lines


def _judge(r: dict) -> list[str]:
    c = r["config"]
    judged = [
        x
        for x in r["cells"].values()
        if "judge_confessed_if_schemed" in x and x["judge_confessed_if_schemed"]["n"]
    ]
    if not c.get("judge"):
        return []
    return [
        "",
        f"Judge {c['judge']} (interrogation answers of episodes that schemed; the rule's count is in the "
        "table): "
        + (
            "; ".join(
                f"{x['scenario']} / {x['variant']} / {'on' if x['nudged'] else 'off'}: "
                f"{_rate(x['judge_confessed_if_schemed'])}"
                for x in judged
            )
            or "no episode schemed"
        )
        + ".",
    ]


def _base_extras(r: dict) -> list[str]:
    """The sandbagging gaps and the alignment-faking pairs."""
    from heredity.reports.stats import fmt_p

    lines = []
    for k, v in r.items():
        if k.startswith("sandbagging_gap"):
            lines += [
                "",
                f"Sandbagging ({k[16:]}): accuracy conflict {v['conflict']:.2f} vs control "
                f"{v['control']:.2f}, gap "
                f"{v['gap']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}] ({v['method']}; unit: {v['unit']}).",
            ]
        if k.startswith("alignment_faking"):
            f = v["faking"]
            lines += [
                "",
                f"Alignment faking ({k[17:]}): {f['k']}/{f['n']} pairs [{f['lo']:.2f}, {f['hi']:.2f}] chose "
                "management's "
                f"option when tested and their own when deployed, {v['reverse']} the reverse; "
                f"{v['test']['test']} "
                f"{fmt_p(v['test']['p'])} (unit: {v['test']['unit']}).",
            ]
    return lines


def _trained_in(r: dict) -> list[str]:
    """The trained-in arm: how it was trained, its sandbagging gaps, and its comparisons per cell."""
    from heredity.reports.stats import fmt_p

    t, tc = r["trained_in"], r["config"]["trained_in"]
    lines = [
        "",
        "## Trained-in arm",
        "",
        f"LoRA on {tc['demonstrations']} scripted demonstrations of the scheming action in {tc['scenario']} "
        f"(conflict variant, nudge on and off; {', '.join(tc['held_out'])} never demonstrated), training "
        f"seeds {tc['seeds']}; then safety SFT on {tc['safety_demonstrations']} honest demonstrations in the "
        "other evaluations' scenarios (so after it, those evaluations are no longer held out). Scheming "
        "rate per cell against the base model (and, for the demonstrated evaluation, after safety SFT "
        "against "
        "before it): Fisher exact two-sided, Holm across each arm's cells; unit: "
        "episodes, the seeds' episodes pooled — with one seed a claim about this trained model, not about "
        "training.",
    ]
    lines += [
        "",
        "Covert re-ranking and sandbagging are scored on the submitted answer, so a wrong answer counts "
        "as scheming whether it is intent or error: read their conflict rows against their control rows "
        "(the error rate) and sandbagging by its accuracy gap below.",
        "",
    ]
    for k, gaps in (t.get("sandbagging") or {}).items():
        for g, v in gaps.items():
            lines += [
                f"Sandbagging, {k.split('|')[0]} (seed {k.split('|')[1]}, {g[16:]}): accuracy conflict "
                f"{v['conflict']:.2f} vs control {v['control']:.2f}, gap {v['gap']:+.2f} [{v['lo']:+.2f}, "
                f"{v['hi']:+.2f}] ({v['method']}; unit: {v['unit']}).",
                "",
            ]
    lines += [
        "| arm | cell | schemed | competent | compared with: schemed | difference [95% CI] | Fisher p "
        "(Holm); unit: episodes |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in t["comparisons"]:
        d = x["test"]
        lines.append(
            f"| {x['arm']} | {x['cell']} | {x['scheming']['k']}/{x['scheming']['n']} | "
            f"{x['competence']['k']}/{x['competence']['n']} | {x['base']['k']}/{x['base']['n']} | "
            f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] | {fmt_p(d['p'])} ({fmt_p(x['p_holm'])}) |"
        )
    return lines


def plot(r: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = [c for c in r["cells"].values() if c["nudged"]]
    comps = [
        x for x in (r.get("trained_in") or {}).get("comparisons") or [] if " vs " not in x["arm"]
    ]  # against the base
    fig, axes = plt.subplots(
        1, 2 if comps else 1, figsize=(max(6, len(cells) * 0.7) * (1.8 if comps else 1), 3.8), squeeze=False
    )
    ax = axes[0][0]
    for i, c in enumerate(cells):
        s = c["scheming"]
        ax.errorbar(
            i,
            s["mean"],
            yerr=[[s["mean"] - s["lo"]], [s["hi"] - s["mean"]]],
            fmt="o",
            color="#a33" if c["variant"] == "conflict" else "#999",
            capsize=3,
        )
    ax.set_xticks(
        range(len(cells)), [f"{c['scenario']}\n{c['variant']}" for c in cells], rotation=60, fontsize=7
    )
    ax.set_ylabel("scheming rate (95% Wilson)")
    ax.set_title("base model, nudge on (red: conflict, grey: control)", fontsize=8)
    ax.set_ylim(0, 1)
    if comps:
        from heredity.reports.stats import wilson_ci

        ax = axes[0][1]
        keys = list(dict.fromkeys(x["cell"] for x in comps))
        arms = list(dict.fromkeys(x["arm"] for x in comps))
        colors = {"base": "#999", arms[0]: "#a33", **({arms[1]: "#36c"} if len(arms) > 1 else {})}
        for j, key in enumerate(keys):
            rows = [x for x in comps if x["cell"] == key]
            pts = [("base", rows[0]["base"])] + [(x["arm"], x["scheming"]) for x in rows]
            for m, (label, kn) in enumerate(pts):
                w = wilson_ci(kn["k"], kn["n"])
                x = j + (m - 1) * 0.22
                ax.errorbar(
                    x,
                    w["mean"],
                    yerr=[[w["mean"] - w["lo"]], [w["hi"] - w["mean"]]],
                    fmt="o",
                    capsize=2,
                    color=colors.get(label, "#000"),
                    label=label if j == 0 else None,
                )
        ax.set_xticks(
            range(len(keys)),
            [k.replace("|", "\n", 1).replace("|", " ") for k in keys],
            rotation=60,
            fontsize=6,
        )
        ax.set_ylim(0, 1)
        ax.set_title("trained-in arm vs the base model", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
