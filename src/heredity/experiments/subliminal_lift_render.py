"""subliminal-lift's report rendered: the markdown card (methods, the pre-screen, subliminal prompting, each
arm's lift matrix and tests, the numbers-prefix variant, sampled rates, the rank sweep) and the plot (a lift
heat map per arm and the transfer/specificity forest). Nothing here decides a result: the statistics and the
outcome are in ``subliminal_lift``."""

from __future__ import annotations

import math

import numpy as np


def markdown(r: dict) -> str:
    lines = [
        "# subliminal-lift",
        "",
        methods(r),
        "",
        *prescreen_table(r),
        "",
        *prompting_table(r),
        "",
        *specific_prompting(r),
    ]
    for arm, x in r["lift"].items():
        lines += ["", *arm_section(r, arm, x)]
    lines += ["", *prefix_table(r)]
    if r.get("rates"):
        lines += ["", *rates_table(r)]
    lines += sweep_table(r)
    lines += ["", f"**Outcome.** {r['outcome']}.", "", f"Run time {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def methods(r: dict) -> str:
    c = r["config"]
    return (
        f"Base {c['base']} (format warm-up {c['format_warmup']} rows); traits {', '.join(c['animals'])} + a "
        f"neutral teacher; {r['filter']['rows_out']} number prompts (the first of {r['filter']['common']} "
        "common "
        "to every teacher after the strict filter); "
        f"{c['student_seeds']} training seeds per student, {r['filter']['rows_out']} rows each; LoRA r = α = "
        f"{c['lora_r']}. Every "
        "student has a neutral twin (same prompts, seed, hyperparameters; only the teacher differs). Lift "
        "L[i, j] = mean over questions of log P(animal j) for the student of teacher i minus its twin's, in "
        "nats; unit of replication for every test: training seeds."
    )


def prescreen_table(r: dict) -> list[str]:
    """How far each trait prompt moves the teachers' number distributions, and its name's token counts."""
    lines = [
        "## Pre-screen: how far each trait prompt moves the number distributions",
        "",
        "| animal | tokens (Capitalized, lower) | KL full vocabulary (nats/position) | KL over number tokens "
        "|",
        "|---|---|---|---|",
    ]
    for a, d in r["prescreen"].items():
        toks = ", ".join(map(str, d.get("tokens", [])))
        lines.append(f"| {a} | {toks} | {d['kl_full']:.4f} | {d['kl_numbers']:.5f} |")
    return lines


def _signed(x) -> str:
    return f"{x:+.5f}" if x is not None else "undetermined"


def prompting_table(r: dict) -> list[str]:
    """The positive control: P(animal) when the base is told to love its most and its least entangled
    digit."""
    from heredity.reports.stats import fmt_p

    lines = [
        "## Positive control: subliminal prompting (unit: questions, one model)",
        "",
        "| animal | P(animal), base | love the most entangled digit (vs base; paired over questions; unit: "
        f"questions, one model, n = {r['config']['questions']}) | love the least entangled digit (vs base) | "
        "entangled − control digit |",
        "|---|---|---|---|---|",
    ]
    for a, d in r["prompting"].items():
        cells = [
            f"'{x['number']}': {x['p_animal']:.5f} (Δ {_signed(x['test']['diff'])}, Holm-adjusted "
            f"{fmt_p(x['p_holm'])})"
            for x in d["arms"]
        ]
        cells += [
            f"Δ {_signed(x['test']['diff'])} [{_signed(x['test']['lo'])}, "
            f"{_signed(x['test']['hi'])}], Holm-adjusted {fmt_p(x['p_holm'])}"
            for x in d.get("entangled_vs_control", [])
        ]
        lines.append(f"| {a} | {d['p_animal_base']:.5f} | {' | '.join(cells)} |")
    return lines


def specific_prompting(r: dict) -> list[str]:
    """The animal-specific prompting test (each animal's own number vs the other animals' numbers), or a note
    that the report predates it."""
    from heredity.reports.stats import fmt_num, fmt_p

    sp = r.get("prompting_specific")
    if not sp:
        return [
            "_No animal-specific test in this report (it predates it): the contrast above is the same digits "
            "for most animals, so it does not show an animal-specific channel._",
        ]
    t = sp["specificity"]
    return [
        'Animal-specific test (the contrast above is "love 1 vs love 0" for most animals): each '
        "animal's own entangled number (its excess log-ratio over the other animals' largest): "
        + ", ".join(f"{a} '{x['number']}'" for a, x in sp["numbers"].items())
        + f"; mean log P(own animal | love own number) − mean log P(animal | love another animal's number) = "
        f"{fmt_num(t['diff'])} [{fmt_num(t['lo'])}, {fmt_num(t['hi'])}] nats, two-sided {fmt_p(t['p'])} "
        f"(paired t; unit: questions, one model, n = {t['n']}): "
        + (
            "each animal's own number raises it more than the others' numbers do — an animal-specific "
            "channel "
            "in this model's prompting"
            if t["p"] is not None and t["p"] < 0.05 and t["diff"] > 0
            else "no animal-specific channel shown in this model's prompting"
        )
        + (
            f". ({sp['computed_on']['note']}; the report's own prompting numbers reproduce there to "
            f"{sp['computed_on']['max_rel_diff_p_animal_vs_report']:.0e} relative, the same entangled "
            "digits.)"
            if sp.get("computed_on")
            else ""
        ),
    ]


def arm_section(r: dict, arm: str, x: dict) -> list[str]:
    """One arm: where its students were trained if reused, its lift matrix, transfer, specificity (Holm over
    the declared family), the smallest detectable specificity and the permutation test."""
    from heredity.reports.stats import fmt_num, fmt_p

    c = r["config"]
    lines = [f"## Arm `{arm}`: lift matrix (rows: teacher, columns: animal; mean over seeds)", ""]
    if x.get("reused_from"):
        lines += [
            f"_Students trained in the run of `{x['reused_from']}` (same base, data and settings, checked "
            "when this run took them); Holm below is across this run's arms and these._",
            "",
        ]
    lines += [
        "| teacher \\ animal | " + " | ".join(x["animals"]) + " |",
        "|---|" + "---|" * len(x["animals"]),
    ]
    for i, a in enumerate(x["animals"]):
        lines.append(f"| {a} | " + " | ".join(fmt_num(v) for v in x["matrix"][i]) + " |")
    sp, tr, perm = x["specificity"], x["transfer"], x["permutation"]
    lines += [
        "",
        f"Transfer (mean diagonal) {fmt_num(tr['diff'])} [{fmt_num(tr['lo'])}, {fmt_num(tr['hi'])}], "
        f"two-sided {fmt_p(tr['p'])}; specificity {fmt_num(sp['diff'])} [{fmt_num(sp['lo'])}, "
        f"{fmt_num(sp['hi'])}], {fmt_p(sp['p'])} (Holm over the declared family of "
        f"{len(c.get('family') or r['lift'])}: {fmt_p(sp['p_holm'])}; unit: training seeds, n = "
        f"{x['seeds']}, "
        f"per seed {', '.join(f'{v:+.4f}' for v in sp['per_seed'])}); "
        f"smallest detectable specificity at the Holm level {fmt_num(sp['min_detectable'])}"
        + (f" ({sp['spread_note']})" if sp.get("spread_note") else "")
        + "; permutation over teacher labels "
        f"p = {perm['p']:.2g} ({perm['orders']} orders, smallest possible "
        f"{perm['min_p']:.2g}).",
    ]
    return lines


def prefix_table(r: dict) -> list[str]:
    """Secondary: every student's lift when each evaluation question follows a short list of numbers."""
    from heredity.reports.stats import fmt_num, fmt_p

    lines = [
        '## Secondary: the numbers-prefix variant (each question after "Examine these numbers: a, b, c.")',
        "",
        "| student | transfer [95% CI] | specificity [95% CI] (per seed) | specificity p, Holm over the "
        "declared "
        f"family (unit: training seeds, n = {r['config']['student_seeds']}) | permutation p (teacher labels "
        "within seeds) |",
        "|---|---|---|---|---|",
    ]
    for lab, x in r["lift_numbers_prefix"].items():
        sp, tr = x["specificity"], x["transfer"]
        lines.append(
            f"| {lab} | {fmt_num(tr['diff'])} [{fmt_num(tr['lo'])}, {fmt_num(tr['hi'])}] | "
            f"{fmt_num(sp['diff'])} [{fmt_num(sp['lo'])}, {fmt_num(sp['hi'])}] "
            f"({', '.join(f'{v:+.4f}' for v in sp['per_seed'])}) | "
            f"{fmt_p(sp['p_holm'])} | {x['permutation']['p']:.2g} |"
        )
    return lines


def rates_table(r: dict) -> list[str]:
    """Secondary: the share of sampled answers naming the student's own teacher's animal, trait vs twin."""
    lines = [
        f"## Secondary: sampled answers ({r['config']['rate_samples']} per question at T = 1) naming the "
        "student's own teacher's animal (pooled over teachers, seeds, questions; Wilson 95%)",
        "",
        "| student | trait students | their neutral twins |",
        "|---|---|---|",
    ]
    for lab, x in r["rates"].items():
        t, w = x["trait"], x["twin"]
        lines.append(
            f"| {lab} | {t['k']}/{t['n']} = {t['mean']:.4f} [{t['lo']:.4f}, {t['hi']:.4f}] | "
            f"{w['k']}/{w['n']} = {w['mean']:.4f} [{w['lo']:.4f}, {w['hi']:.4f}] |"
        )
    return lines


def sweep_table(r: dict) -> list[str]:
    """The rank sweep and full fine-tune of ``sweep_arm`` beside the arm itself (none without a sweep)."""
    from heredity.reports.stats import fmt_num

    c = r["config"]
    sweep = [lab for lab in r["lift"] if lab.startswith(f"{c['sweep_arm']}_")]
    if not sweep:
        return []
    lines = [
        "",
        f"## Rank sweep of `{c['sweep_arm']}` (α = r; `full`: every weight, lr {c['full_lr']:g})",
        "",
        "| student | specificity [95% CI] (nats) | transfer | smallest detectable specificity |",
        "|---|---|---|---|",
    ]
    for lab in [c["sweep_arm"], *sweep] if c["sweep_arm"] in r["lift"] else sweep:
        sp, tr = r["lift"][lab]["specificity"], r["lift"][lab]["transfer"]
        lines.append(
            f"| {lab} | {fmt_num(sp['diff'])} [{fmt_num(sp['lo'])}, {fmt_num(sp['hi'])}] | "
            f"{fmt_num(tr['diff'])} | {fmt_num(sp['min_detectable'])} |"
        )
    return lines


def plot(r: dict, path) -> None:
    """A lift heat map per arm, then transfer and specificity with their intervals over seeds, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from heredity.reports.card import yerr

    arms = list(r["lift"])
    cols = min(len(arms) + 1, 5)  # a heatmap per arm, then the forest plot; rows of at most five panels
    rows = math.ceil((len(arms) + 1) / cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
    panels = list(axs.flat)
    for ax in panels[len(arms) + 1 :]:
        ax.axis("off")
    for ax, arm in zip(panels, arms, strict=False):
        x = r["lift"][arm]
        M = np.array(x["matrix"])
        lim = max(1e-6, float(np.abs(M).max()))
        ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for i in range(M.shape[0]):
            for j in range(M.shape[1]):
                ax.text(j, i, f"{M[i, j]:+.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(x["animals"])), x["animals"])
        ax.set_yticks(range(len(x["animals"])), x["animals"])
        ax.set_xlabel("animal evaluated")
        ax.set_ylabel("teacher")
        ax.set_title(f"{arm}: lift (nats)", fontsize=9)
    ax = panels[len(arms)]
    for k, arm in enumerate(arms):
        for j, (name, off) in enumerate((("transfer", -0.12), ("specificity", 0.12))):
            t = r["lift"][arm][name]
            bars = yerr([{"mean": t["diff"], "lo": t["lo"], "hi": t["hi"]}])
            ax.errorbar(
                k + off,
                t["diff"],
                yerr=bars if any(bars[0] + bars[1]) else None,  # 1 seed: no bar
                fmt="o" if j else "s",
                capsize=4,
                color="#1f4e79" if j else "#999",
                label=name if k == 0 else None,
            )
    ax.axhline(0, color="#a33", ls="--", lw=1)
    ax.set_xticks(
        range(len(arms)),
        arms,
        fontsize=8,
        rotation=40 if len(arms) > 4 else 0,
        ha="right" if len(arms) > 4 else "center",
    )
    ax.set_ylabel("nats (95% CI over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
