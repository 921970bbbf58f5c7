"""subliminal-weights' report rendered: the markdown card (methods, the teacher gate, the Holm family's tests,
each student group's lift matrix, recovery and cosines, the positive control) and the plot (lift matrices and
the theorem's alignment per replicate). Nothing here decides a result: see ``subliminal_weights_stats``."""

from __future__ import annotations

import numpy as np

from heredity.experiments.subliminal_weights_stats import NEUTRAL, NUMBER_GRAMMAR


def markdown(r: dict) -> str:
    lines = [
        "# subliminal-weights",
        "",
        f"**Outcome.** {r['outcome']}.",
        "",
        "## Methods",
        "",
        *methods(r),
        "",
        "## Teachers and the gate",
        "",
        *gate_table(r),
        "",
        *tests_table(r),
        "",
        "## Students: lift matrices, recovery and the theorem's cosine",
        "",
    ]
    for lab, x in r["results"].items():
        if "matrix" in x:
            lines += student_section(r, lab, x)
    lines += control_section(r)
    lines += [f"Run time {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def methods(r: dict) -> list[str]:
    """The design paragraph and the statistics paragraph."""
    c, n = r["config"], len(r["replicates_passed"])
    design = (
        f"Base {c['base']}. Teachers: LoRA r = α = {c['lora_r']} fine-tunes of the base, one per trait "
        f"({', '.join(c['animals'])}) and a neutral one, {r['teacher_data'][NEUTRAL]['rows']} rows each, "
        f"{c['teacher_epochs']:g} epochs at lr {c['teacher_lr']:g}, per replicate from the replicate's "
        f"adapter seed; {c['replicates']} replicates (adapter initializations; the data order is the same in "
        f"all). Gate: own-animal lift − mean lift on the other {len(c['panel']) - 1} panel animals ≥ "
        f"{c['gate']:g} nats. Students: {', '.join(c['arms'])} for {', '.join(map(str, c['steps']))} "
        f"optimizer steps (batch {c['batch_size']}, lr {c['student_lr']:g}) on {r['number_data']['kept']} "
        f"number completions of the unprompted base ({r['number_data']['sampled']} sampled under the grammar "
        f"`{NUMBER_GRAMMAR}`, the strict filter kept {r['number_data']['kept']}); initializations "
        f"{', '.join(c['inits'])} (other_base: base + noise {c['base_noise']:g} × the mean teacher update "
        f"norm per matrix). Evaluation: P(one-word answer names the animal) over {c['questions']} questions, "
        "mean log; lift = student − its twin (the neutral teacher's student with the same initialization and "
        "base)."
    )
    statistics = (
        f"Statistics: two-sided paired t tests over replicates (n = {n}); one Holm family of "
        f"{len(c['family'])} tests declared in the config before the run; smallest detectable effects at "
        f"α = 0.05/{len(c['family'])}, t quantiles with {max(n - 1, 0)} degrees of freedom"
        + (f"; with n = {n} the spread is poorly estimated" if n <= 3 else "")
        + "."
    )
    return [design, "", statistics]


def gate_table(r: dict) -> list[str]:
    """Each replicate's trait teachers against the gate, then the teachers' data counts."""
    lines = [
        "| replicate | teacher | own lift (nats) | mean lift, other panel animals | specificity | gate |",
        "|---|---|---|---|---|---|",
    ]
    for rep, g in r["gates"].items():
        for a, x in g.items():
            lines.append(
                f"| {rep} | {a} | {x['own']:+.3f} | {x['others']:+.3f} | {x['specificity']:+.3f} | "
                f"{'passed' if x['passed'] else 'FAILED'} |"
            )
    data = "; ".join(
        f"{t}: {x['rows']} rows of {x['qualified']} qualifying "
        f"(of {x['sampled']} sampled), mean {x['mean_chars']} characters"
        for t, x in r["teacher_data"].items()
    )
    return [*lines, "", f"Teacher data: {data}."]


def tests_table(r: dict) -> list[str]:
    """The declared Holm family, one row per test (untested ones with their reason)."""
    from heredity.reports.stats import fmt_ci, fmt_num, fmt_p

    n = len(r["replicates_passed"])
    lines = [
        f"## Tests (one Holm family of {len(r['tests'])}; unit: {r['unit']})",
        "",
        f"| test | estimate [95% CI] | p (unit: {r['unit']}, n = {n}) | Holm p | smallest detectable at the "
        "Holm level | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for t in r["tests"]:
        if not t.get("test"):
            lines.append(f"| {t['name']} | — | — | — | — | {t['verdict']} |")
            continue
        lines.append(
            f"| {t['name']}{' (primary)' if t['primary'] else ''} | "
            f"{fmt_ci({'mean': t['diff'], 'lo': t['lo'], 'hi': t['hi']})} | {fmt_p(t['p'])} | "
            f"{fmt_p(t['p_holm'])} | "
            f"{fmt_num(t['min_detectable'])} | {t['verdict']} |"
        )
    if r["tests"] and r["tests"][0].get("spread_note"):
        lines += ["", f"_Note: {r['tests'][0]['spread_note']}._"]
    return lines


def student_section(r: dict, lab: str, x: dict) -> list[str]:
    """One student group: its lift matrix, specificity and transfer, the permutation test, recovery, profile
    correlation and cosines with the teachers' changes."""
    from heredity.reports.stats import fmt_num

    n, panel = len(r["replicates_passed"]), r["config"]["panel"]
    lines = [
        f"### {lab}",
        "",
        "| teacher \\ animal | " + " | ".join(x["animals"]) + " |",
        "|---|" + "---|" * len(x["animals"]),
    ]
    for i, a in enumerate(x["animals"]):
        lines.append(f"| {a} | " + " | ".join(f"{v:+.4f}" for v in x["matrix"][i]) + " |")
    rec = ", ".join(f"{a} {fmt_num(v['mean'])}" for a, v in x["recovery"].items())
    cor = ", ".join(f"{a} {fmt_num(v['mean'])}" for a, v in x["profile_corr"].items())
    co, perm, sp, tr = x["cosine"], x["permutation"], x["specificity"], x["transfer"]
    cos_dw = ", ".join(f"{v:.4f}" for v in co["cos_dw"]["per_replicate"])
    text = (
        f"Specificity {fmt_num(sp['diff'])} [{fmt_num(sp['lo'])}, {fmt_num(sp['hi'])}] (per replicate "
        f"{', '.join(f'{v:+.4f}' for v in sp['per_seed'])}), transfer {fmt_num(tr['diff'])} (per replicate "
        f"{', '.join(f'{v:+.4f}' for v in tr['per_seed'])}); unit: {r['unit']}, n = {n}. "
        f"Permutation over teacher labels within replicates p = {perm['p']:.2g} (smallest possible "
        f"{perm['min_p']:.2g}"
        + (
            "; with this many animals and replicates it cannot reject at 0.05"
            if perm["min_p"] >= 0.05
            else ""
        )
        + "). "
        f"Share of the teacher's own lift recovered: {rec}. Correlation with the teacher's lift profile over "
        f"{len(panel)} animals: {cor}. Cosine with the teacher's change: ΔW "
        f"{fmt_num(co['cos_dw']['mean'], 4)} (per replicate {cos_dw}), "
        f"LoRA coordinates {fmt_num(co['cos_lora']['mean'], 4)}, trait-specific ΔW (minus twin / neutral "
        f"teacher) {fmt_num(co['cos_dw_trait']['mean'], 4)}; with the other trait teachers' ΔW "
        f"{fmt_num(co['cos_dw_other_teacher']['mean'], 4)}."
    )
    return [*lines, "", text, ""]


def control_section(r: dict) -> list[str]:
    """The positive control's share of the teachers' specificity and of their own-animal lift (none if
    absent)."""
    from heredity.reports.stats import fmt_num

    ctl = r.get("control")
    if not ctl:
        return []
    c, n = r["config"], len(r["replicates_passed"])
    sh, ol = ctl["share"], ctl["own_lift_share"]
    return [
        "## Positive control",
        "",
        f"Full-vocabulary distillation on the neutral teacher's texts, same-init, {max(c['steps'])} steps: "
        f"share of the teachers' specificity recovered {fmt_num(sh['mean'])} [{fmt_num(sh['lo'])}, "
        f"{fmt_num(sh['hi'])}] (per replicate {', '.join(f'{v:.3f}' for v in sh['per_replicate'])}; "
        f"teachers' specificity over the trait animals "
        f"{', '.join(f'{v:.3f}' for v in sh['teacher_specificity'])} nats; target {ctl['target']:g}: "
        f"{'reached' if ctl['reached'] else 'not reached'}); share of their own-animal lift "
        f"{fmt_num(ol['mean'])} [{fmt_num(ol['lo'])}, {fmt_num(ol['hi'])}] (per replicate "
        f"{', '.join(f'{v:.3f}' for v in ol['per_replicate'])}); unit: {r['unit']}, n = {n}.",
        "",
    ]


def plot(r: dict, path) -> None:
    """Each student group's lift matrix as a heat map, and the students' ΔW cosine with their teacher's per
    replicate (the theorem's alignment)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = {k: v for k, v in r["results"].items() if "matrix" in v}
    fig, axs = plt.subplots(1, len(res) + 1, figsize=(3.6 * (len(res) + 1), 3.4), squeeze=False)
    axs = axs[0]
    lim = max(1e-6, max(float(np.abs(np.array(v["matrix"])).max()) for v in res.values()))
    for ax, (lab, x) in zip(axs, res.items(), strict=False):
        M = np.array(x["matrix"])
        ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for i in range(M.shape[0]):
            for j in range(M.shape[1]):
                ax.text(j, i, f"{M[i, j]:+.3f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(x["animals"])), x["animals"])
        ax.set_yticks(range(len(x["animals"])), x["animals"])
        ax.set_title(f"{lab}: lift (nats)", fontsize=9)
    ax = axs[-1]
    for k, x in enumerate(res.values()):
        v = x["cosine"]["cos_dw"]["per_replicate"]
        ax.scatter([k] * len(v), v, color="#1f4e79", s=14)
        ax.plot([k - 0.2, k + 0.2], [np.mean(v)] * 2, color="#1f4e79")
    ax.axhline(0, color="#a33", ls="--", lw=1)
    ax.set_xticks(range(len(res)), list(res), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("cos(student ΔW, teacher ΔW)")
    ax.set_title("the theorem: alignment per replicate", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
