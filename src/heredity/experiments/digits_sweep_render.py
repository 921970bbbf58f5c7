"""subliminal-digits-sweep's report rendered: the markdown card (one row per point: the arms, the gap, Holm p,
the verdict) and the plot (the gap against each axis with its intervals). Nothing here decides a result."""

from __future__ import annotations

# each axis as the report names it (the outcome sentence uses these too)
LABELS = {"aux": "auxiliary logits m", "hidden": "hidden width", "student_steps": "distillation steps"}


def markdown(r: dict) -> str:
    from heredity.reports.stats import fmt_ci, fmt_p

    base = r["config"]["base"]
    lines = [
        "# subliminal-digits-sweep",
        "",
        f"Each row is one `subliminal-digits` run ({base['data']}, {base['seeds']} training seeds) with one "
        f"setting changed from the base (m = {base['aux']}, width {base['hidden']}, {base['student_steps']} "
        "distillation steps). Gap: same-init minus other-init aux-student test accuracy, paired by seed "
        "(each seed trains one teacher and both students); 95% t interval over seeds; two-sided p, "
        f"Holm-adjusted over the {r['runs']} distinct runs (the base setting appears on every axis); for a "
        "null, the smallest gap the seeds could have detected (80% power at the Holm level, α = 0.05 / the "
        "distinct runs). Unit of replication: training seeds.",
        "",
        "| axis | value | same-init | other-init | gap [95% CI] | p (Holm; unit: training seeds, n = "
        f"{base['seeds']}) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in r["points"]:
        t = p["test"]
        lines.append(
            f"| {LABELS[p['axis']]} | {p['value']} | {fmt_ci(p['same'])} | {fmt_ci(p['other'])} | "
            f"{fmt_ci({'mean': t['diff'], 'lo': t['lo'], 'hi': t['hi']})} | {fmt_p(p['p_holm'])} | "
            f"{p['verdict']}"
            + (f" (could have seen {p['min_detectable']:.3f})" if p["verdict"] == "null" else "")
            + " |"
        )
    lines += ["", f"**Outcome.** {r['outcome']}.", ""]
    return "\n".join(lines)


def plot(r: dict, path) -> None:
    """Per axis, the same-init − other-init gap at each value with its 95% CI over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = list(r["by_axis"])
    fig, axs = plt.subplots(1, len(axes), figsize=(4 * len(axes), 3.4), squeeze=False)
    for ax, axis in zip(axs[0], axes, strict=True):
        pts = [p for p in r["points"] if p["axis"] == axis]
        xs = [p["value"] for p in pts]
        ys = [p["test"]["diff"] for p in pts]
        lo = [max(0.0, y - p["test"]["lo"]) for y, p in zip(ys, pts, strict=True)]
        hi = [max(0.0, p["test"]["hi"] - y) for y, p in zip(ys, pts, strict=True)]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, color="#1f4e79")
        ax.axhline(0, color="#a33", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(LABELS[axis])
        ax.set_ylabel("same-init − other-init accuracy")
    fig.suptitle("subliminal-digits: the transfer gap along three axes (95% CI over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
