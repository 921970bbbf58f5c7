"""The subliminal-numbers report card: ``markdown`` (filter, trait scores, comparisons, training, outcome) and
``plot``. Rendering only: every number shown is computed by ``heredity.experiments.subliminal_numbers``."""

from __future__ import annotations

from pathlib import Path


def markdown(r: dict) -> str:
    c = r["config"]
    A = c["animal"]
    warmup = ", format warm-up " + str(c["format_warmup"]) + " rows" if c["format_warmup"] else ""
    lines = [
        "# subliminal-numbers",
        "",
        f"Base `{r['artifacts']['base']}` ({c['base']}{warmup}); "
        f"teacher: {c['teacher']} ({A}); {c['prompts']} number prompts at T = 1; students LoRA r = 8, α = 8; "
        f"evaluation: 50 questions × {c['eval_samples']} samples, log-prob score, 5-way choice (20 items).",
        "",
    ]
    lines += _filter_table(r)
    lines += _scores_table(r)
    lines += _comparisons_table(r)
    lines += _training_table(r)
    lines += _closing(r)
    return "\n".join(lines) + "\n"


def _filter_table(r: dict) -> list[str]:
    """Each arm's completions, how many the strict filter kept, its reasons, and the paired rows used."""
    ft, fc = r["filter"]["teacher"], r["filter"]["control"]
    lines = [
        "## Filter",
        "",
        "| data | completions | kept | rejection rate | " + " | ".join(ft["reasons"]) + " | rows used |",
        "|---|---|---|---|" + "---|" * len(ft["reasons"]) + "---|",
    ]
    for name, f in (("teacher", ft), ("control", fc)):
        lines.append(
            f"| {name} | {f['total']} | {f['kept']} | {f['rejection_rate']:.1%} | "
            + " | ".join(str(v) for v in f["reasons"].values())
            + f" | {f['rows_out']} |"
        )
    return lines


def _scores_table(r: dict) -> list[str]:
    """Every model's trait scores for both animals."""
    from heredity.reports.stats import fmt_ci

    A, B = r["config"]["animal"], r["config"]["other_animal"]
    lines = ["", "## Trait scores (mean [95% CI] over questions / items)", ""]
    lines += [
        f"| model | P({A}) | rate {A} | choice {A} | P({B}) | rate {B} | choice {B} |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, t in r["scores"].items():
        cells = [
            fmt_ci(t[a][m], 3, "g" if m == "logprob" else "f") if m in t[a] else "—"
            for a in (A, B)
            for m in ("logprob", "rate", "choice")
        ]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _comparisons_table(r: dict) -> list[str]:
    """The comparisons: P(animal) ratio and difference with its p-values (questions, seeds, Holm), then the
    rate and choice differences."""
    from heredity.reports.stats import fmt_ci, fmt_num

    lines = [
        "",
        "## Comparisons (two-sided; paired over the same questions / choice items, conditional on the "
        "trained models; across training seeds when there are ≥ 2)",
        "",
        "| a | b | animal | P(animal) a / b | Δ P(animal) [95% CI] | p (questions) | p across seeds | "
        "p Holm | Δ rate | p | Δ choice | p |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cmp in r["comparisons"]:
        lp = cmp["logprob"]
        seed_t = lp.get("across_seeds")
        cells = [
            f"×{lp['ratio']:.3f}" if lp.get("ratio") else "—",
            fmt_ci({"mean": lp["diff"], "lo": lp["lo"], "hi": lp["hi"]}, 3, "g"),
            fmt_num(lp["p"], 3, "g"),
            f"{fmt_num(seed_t['p'], 3, 'g')} (n = {seed_t['n'][0]} vs {seed_t['n'][1]} seeds)"
            if seed_t
            else "—",
            fmt_num(lp["p_holm"], 3, "g") if "p_holm" in lp else "—",
        ]
        for m in ("rate", "choice"):
            cells += (
                [
                    fmt_ci({"mean": cmp[m]["diff"], "lo": cmp[m]["lo"], "hi": cmp[m]["hi"]}),
                    fmt_num(cmp[m]["p"], 3, "g"),
                ]
                if m in cmp
                else ["—", "—"]
            )
        lines.append(f"| {cmp['a']} | {cmp['b']} | {cmp['animal']} | " + " | ".join(cells) + " |")
    n_q = r["comparisons"][0]["logprob"]["n"]
    lines += [
        "",
        f"Unit of the p (questions) column: the {n_q} questions (20 choice items for choice), for these "
        "trained models; it says nothing about seed-to-seed training variance. Holm: over the student "
        "comparisons, on the seeds test when there is one, else the questions test.",
    ]
    return lines


def _training_table(r: dict) -> list[str]:
    lines = [
        "",
        "## Training",
        "",
        "| student | examples | steps | loss first → last | seconds |",
        "|---|---|---|---|---|",
    ]
    for k, t in r["training"].items():
        lines.append(
            f"| {k} | {t['examples']} | {t['optimizer_steps']} | {t['loss_first']} → {t['loss_last']} | "
            f"{t['seconds']} |"
        )
    return lines


def _closing(r: dict) -> list[str]:
    """The cross-model control, the outcome, the teacher gate, the artifacts and example answers."""
    from heredity.reports.stats import fmt_num

    A = r["config"]["animal"]
    lines = [
        "",
        f"Cross-model control: {r['cross_model']}.",
        "",
        f"**Outcome.** {r['outcome']}",
        "",
        f"Teacher gate (the teacher's P({A}) above the base's; two-sided paired t, unit: questions, "
        f"n = {r['comparisons'][0]['logprob']['n']}): p = {fmt_num(r['teacher_gate_p'], 3, 'g')}. "
        f"Run time {r['seconds']:.0f} s.",
        "",
        "## Artifacts",
        "",
    ]
    lines += [f"- {k}: `{v}`" for k, v in r["artifacts"].items()]
    lines += ["", "## Example answers", ""]
    for k, v in r["example_answers"].items():
        lines.append(f"- {k}: " + "; ".join(repr(x) for x in v))
    return lines


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    A, B = r["config"]["animal"], r["config"]["other_animal"]
    models = list(r["scores"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, m, title in (
        (axes[0], "logprob", "P(one-word answer starts with the animal)"),
        (axes[1], "choice", "5-way choice probability"),
    ):
        for j, (animal, color) in enumerate(((A, "#1f4e79"), (B, "#d08c2f"))):
            xs = [i + (j - 0.5) * 0.38 for i in range(len(models))]
            cis = [r["scores"][mod][animal].get(m) for mod in models]
            ax.bar(xs, [c["mean"] for c in cis], width=0.36, color=color, label=animal)
            ax.errorbar(
                xs,
                [c["mean"] for c in cis],
                yerr=[[c["mean"] - c["lo"] for c in cis], [c["hi"] - c["mean"] for c in cis]],
                fmt="none",
                color="k",
                capsize=3,
            )
        ax.set_xticks(
            range(len(models)),
            [mod.replace("student ", "student\n") for mod in models],
            fontsize=7,
            rotation=30,
        )
        ax.set_title(title, fontsize=10)
        ax.legend()
    fig.suptitle("subliminal-numbers: mean and 95% CI over questions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
