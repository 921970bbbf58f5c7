"""The collapse report card: ``markdown`` (one row per regime and generation, the tests, the outcome) and
``plot``. Rendering only: every number shown is computed by ``heredity.experiments.collapse``."""

from __future__ import annotations

from heredity.reports.card import yerr
from heredity.reports.stats import fmt_ci, fmt_num


def markdown(report: dict) -> str:
    lines = ["# collapse", ""]
    lines += _methods(report)
    lines += _table(report)
    lines += _tests(report)
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
        + [
            f"- {r['regime']} generation {r['generation']}: " + ", ".join(f"`{i}`" for i in r["ids"])
            for r in report["rows"]
        ]
        + [""]
    )
    return "\n".join(lines)


def _methods(report: dict) -> list[str]:
    """How each generation is trained, sampled and measured, and the unit of replication."""
    cfg = report["config"]
    p = cfg["pretrain"]
    n_seeds = report["rows"][0]["seeds"]
    return [
        f"Every generation: a {p['layers']}-layer, {p['hidden']}-wide Llama trained from scratch for "
        f"{p['iters']} iterations (batch {p['batch_size']} × {p['context']} tokens). Generation k+1 trains "
        f"on documents (up to {cfg['doc_tokens']} tokens, ending where the model ends them) sampled from "
        f"generation k at temperature {cfg['temperature']}, as many tokens as the "
        "real training text: replace (only them), accumulate (real + all earlier synthetic "
        f"text), keep-real ({cfg['real_fraction']:.0%} real). Perplexity on held-out real text (exp of the "
        "mean window NLL); distinct n-grams and tail coverage (share of the real text's rarest tokens, the "
        f"last {cfg['tail_fraction']:.0%} of its mass, that still occur) on the model's own samples.",
        "",
        f"Unit of replication: **{n_seeds} training seeds**, each an independent chain (generation 0 and "
        "every regime's generations retrained and resampled from that seed). Every value is the mean over "
        "seeds [95% t interval over seeds]; held-out windows measure one model and are not the unit of any "
        "test.",
        "",
    ]


def _table(report: dict) -> list[str]:
    """The real text's reference row, then one row per regime and generation."""
    ng = report["config"]["ngrams"]
    lines = [
        "| regime | gen | train tokens (seed 0) | val perplexity | per seed | "
        + " | ".join(f"distinct-{n}" for n in ng)
        + " | token types | tail coverage |",
        "|---|---|---|---|---|" + "---|" * len(ng) + "---|---|",
    ]
    ref = report["reference"]
    lines.append(
        "| real text (reference) | — | — | — | — | "
        + " | ".join(f"{ref['distinct'][str(n)]:.3f}" for n in ng)
        + f" | {ref['tail']['types']} | 1.00 |"
    )
    for r in report["rows"]:
        pp = r["perplexity"]
        lines.append(
            f"| {r['regime']} | {r['generation']} | {r['train']['tokens'][0]:,} | {fmt_ci(pp, 2)} | "
            + ", ".join(f"{x:.1f}" for x in r["perplexity_per_seed"])
            + " | "
            + " | ".join(fmt_ci(r["distinct"][str(n)], 3) for n in ng)
            + f" | {r['types']['mean']:.0f} | {fmt_ci(r['tail_coverage'], 3)} |"
        )
    return lines


def _tests(report: dict) -> list[str]:
    if not report.get("comparisons"):
        return []
    lines = [
        "",
        "## Tests (two-sided, paired by seed; Holm over the family)",
        "",
        "| a | b | Δ mean NLL (nats) [95% CI] | p | p Holm | unit, n |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["comparisons"]:
        lines.append(
            f"| {c['a']} | {c['b']} | {fmt_ci({'mean': c['diff'], 'lo': c['lo'], 'hi': c['hi']}, 3)} | "
            f"{fmt_num(c['p'], 3, 'g')} | {fmt_num(c.get('p_holm'), 3, 'g')} | {c['unit']}, n = {c['n']} |"
        )
    return lines


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = report["config"]
    rows = report["rows"]
    g0 = next(r for r in rows if r["regime"] == "real")
    n = str(cfg["ngrams"][len(cfg["ngrams"]) // 2])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for i, regime in enumerate(cfg["regimes"]):
        rs = [g0] + sorted((r for r in rows if r["regime"] == regime), key=lambda r: r["generation"])
        x = [r["generation"] for r in rs]
        for ax, cis in (
            (axes[0], [r["perplexity"] for r in rs]),
            (axes[1], [r["distinct"][n] for r in rs]),
            (axes[2], [r["tail_coverage"] for r in rs]),
        ):
            ax.errorbar(
                x,
                [q["mean"] for q in cis],
                yerr=yerr(cis),
                marker="o",
                capsize=3,
                color=f"C{i}",
                label=regime,
            )
    axes[1].axhline(report["reference"]["distinct"][n], ls="--", color="gray", label="real text")
    axes[0].set_ylabel("perplexity on held-out real text")
    axes[1].set_ylabel(f"distinct-{n} of the model's samples")
    axes[2].set_ylabel(f"tail coverage (rarest {cfg['tail_fraction']:.0%} of real mass)")
    # a share: on an autoscaled axis, differences of 0.005 would look like a collapse
    axes[2].set_ylim(0, 1.05)
    for ax, title in zip(axes, ("Perplexity", "Diversity", "Tail of the token distribution"), strict=True):
        ax.set_xlabel("generation")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"collapse: mean and 95% CI over {g0['seeds']} training seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
