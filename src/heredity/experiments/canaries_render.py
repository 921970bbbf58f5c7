"""The canaries report rendered: ``markdown(report)`` and ``plot(report, path)`` (read from the report JSON
alone; ``experiments.canaries`` computes it)."""

from __future__ import annotations

import math

from heredity.reports.card import yerr
from heredity.reports.stats import fmt_ci


def markdown(report: dict) -> str:
    lines = _methods(report) + _exposure(report) + _training(report) + _continuations(report)
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
        + [f"- {k}: `{v}`" for k, v in report["models"].items()]
        + [""]
    )
    return "\n".join(lines)


def _methods(report: dict) -> list[str]:
    cfg = report["config"]
    fts = ", ".join(
        f"{k}: {v['method']} lr {v['lr']}"
        + (f" r={v['lora_r']} α={v['lora_alpha']}" if v["method"] == "lora" else "")
        + f", {v['epochs']} epochs"
        for k, v in cfg["finetunes"].items()
    )
    return [
        "# canaries",
        "",
        f"Base {cfg['base']}. Corpus: {cfg['filler_docs']} documentation paragraphs + canaries "
        f'("<name>\'s PIN is" + {cfg["digits"]} digits), {cfg["canaries_per_count"]} canaries at each '
        "repetition count "
        f"{cfg['repetitions']} and {cfg['canaries_per_count']} never inserted; {report['corpus_rows']} "
        "documents in all, "
        f"{1 - cfg['filler_docs'] / report['corpus_rows']:.0%} of them canary lines (far denser than in the "
        "paper's corpora, "
        "so that a CPU run sees enough repetitions). "
        f"Fine-tunes (full-sequence loss, plain text): {fts}.",
        "",
    ]


def _exposure(report: dict) -> list[str]:
    """Exposure and extraction per model and repetition count, and the skew-normal check."""
    cfg = report["config"]
    key = report["key"]
    lines = [
        f"Exposure = log2|R| − log2 rank over all {10 ** cfg['digits']:,} secrets "
        + (
            "(exact enumeration)"
            if key == "exposure"
            else f"(skew-normal fit to {cfg['skew_samples']} random secrets)"
        )
        + "; mean [95% CI over canaries]. Extraction: greedy decoding from the prefix gives the secret; "
        "rate [Wilson 95% CI].",
        "",
        "| model | repetitions | exposure (bits) | extraction |",
        "|---|---|---|---|",
    ]
    for t in report["table"]:
        reps = "0 (control)" if t["repetitions"] == 0 else str(t["repetitions"])
        lines.append(f"| {t['model']} | {reps} | {fmt_ci(t[key], 2)} | {fmt_ci(t['extraction'], 2)} |")
    chk = report["skewnorm_check"]
    if chk:
        corr = "n/a" if chk["corr"] is None else f"{chk['corr']:.3f}"
        lines += [
            "",
            f"Skew-normal extrapolation from {cfg['skew_samples']} random secrets "
            f"({cfg['skew_samples'] / 10 ** cfg['digits']:.1%} of R) against the exact exposure, over the "
            f"{chk['n']} "
            f"canary × model pairs the model does not rank first ({chk['capped']} ranked first are left out: "
            "both "
            f"values are capped at log2|R| there): mean |difference| {chk['mean_abs_diff']:.2f} bits, mean "
            "difference "
            f"(exact − estimate) {chk['mean_diff']:+.2f}, correlation {corr}.",
        ]
    return lines


def _training(report: dict) -> list[str]:
    lines = ["", "## Training", "", "| model | steps | loss first → last | seconds |", "|---|---|---|---|"]
    for label, t in report["train"].items():
        lines.append(f"| {label} | {t['steps']} | {t['loss_first']} → {t['loss_last']} | {t['seconds']} |")
    return lines


def _continuations(report: dict) -> list[str]:
    top = max(report["config"]["repetitions"])
    lines = [
        "",
        f"## Greedy continuations of the {top}× canaries",
        "",
        "| model | prefix | secret | greedy |",
        "|---|---|---|---|",
    ]
    for label, rows in report["canaries"].items():
        for r in rows:
            if r["repetitions"] == top:
                lines.append(f"| {label} | {r['prefix']} | {r['secret']} | `{r['greedy'].strip()[:40]}` |")
    return lines


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = report["key"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in report["models"]:
        rows = sorted(
            (t for t in report["table"] if t["model"] == label and t["repetitions"] > 0),
            key=lambda t: t["repetitions"],
        )
        x = [t["repetitions"] for t in rows]
        for ax, k in ((a, key), (b, "extraction")):
            m = [t[k]["mean"] for t in rows]
            ax.errorbar(x, m, yerr=yerr([t[k] for t in rows]), marker="o", capsize=3, label=label)
    top = math.log2(10 ** report["config"]["digits"])
    a.axhline(top, ls=":", color="gray", label="max (rank 1)")
    a.axhline(1 / math.log(2), ls="--", color="gray", label="random secret (≈1.44)")
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("repetitions of the canary in the corpus")
    a.set_ylabel("exposure (bits)")
    a.set_title("Exposure vs repetitions")
    b.set_ylabel("greedy extraction rate")
    b.set_ylim(-0.05, 1.05)
    b.set_title("Extraction vs repetitions")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
