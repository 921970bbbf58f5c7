"""subliminal-digits' report rendered: the markdown card (methods, every arm's accuracy over seeds, the
outcome) and the plot (accuracy per arm, mean, 95% CI and each seed, against chance). Nothing here decides a
result."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def markdown(report: dict) -> str:
    from heredity.reports.stats import fmt_ci

    c = report["config"]
    lines = [
        "# subliminal-digits",
        "",
        f"Data `{report['data']}` ({c['data']}); {c['seeds']} seeds; MLP in→{c['hidden']}→{c['hidden']}→"
        f"(10 + {c['aux']}); teachers {c['teacher_epochs']} epochs (Adam {c['teacher_lr']}); students "
        f"{c['student_steps']} steps × {c['student_batch']} noise inputs (Adam {c['student_lr']}). Unit of "
        f"replication: the {c['seeds']} training seeds (each trains its own teacher and students); intervals "
        "are t intervals over seeds.",
        "",
        "| arm | n | accuracy, mean [95% CI] | sd |",
        "|---|---|---|---|",
    ]
    for name, a in report["arms"].items():
        if a.get("exact"):
            lines.append(f"| {name} | — | {a['mean']:.3f} (by construction) | — |")
        else:
            lines.append(f"| {name} | {a['n']} | {fmt_ci(a)} | {a['sd']:.3f} |")
    times = report["times"]
    lines += [
        "",
        f"**Outcome.** {report['outcome']}",
        "",
        f"Run time {report['seconds']:.1f} s on {report['device']} (teachers {times['teachers_s']:.1f} s, "
        f"students {times['students_s']:.1f} s). Artifacts: {', '.join(report['artifacts'])}.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Test accuracy per arm: bars at the mean, the 95% CI, each seed's accuracy, and chance (the report's
    ``chance`` arm, 1/10)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in report["arms"] if n != "chance"]
    fig, ax = plt.subplots(figsize=(8, 4))
    rng = np.random.default_rng(0)
    for i, n in enumerate(names):
        a = report["arms"][n]
        ax.bar(i, a["mean"], color="#8fb3d9" if "student" in n else "#c9c9c9")
        ax.errorbar(i, a["mean"], yerr=[[a["mean"] - a["lo"]], [a["hi"] - a["mean"]]], color="k", capsize=4)
        ys = report["per_seed"][n]
        ax.scatter(i + rng.uniform(-0.2, 0.2, len(ys)), ys, s=8, color="#1f4e79", zorder=3)
    ax.axhline(report["arms"]["chance"]["mean"], ls="--", color="#a33", label="chance")
    ax.set_xticks(range(len(names)), [n.replace("student ", "student\n") for n in names], fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"subliminal-digits: {report['config']['seeds']} seeds, mean and 95% CI")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
