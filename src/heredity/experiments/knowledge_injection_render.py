"""The knowledge-injection report card: ``markdown`` (accuracy per arm and attribute, retrieval, training,
samples) and ``plot``. Rendering only: every number shown is computed by
``heredity.experiments.knowledge_injection``."""

from __future__ import annotations

from heredity.reports.card import yerr
from heredity.reports.stats import fmt_ci


def markdown(report: dict) -> str:
    cfg = report["config"]
    ft = cfg["finetune"]
    attrs = report["attributes"]
    lines = [
        "# knowledge-injection",
        "",
        f"Base {cfg['base']}. Knowledge base: {cfg['entities']} invented countries × 3 attributes = "
        f"{report['questions']} facts; one test question per fact, worded unlike any statement. FT: "
        f"{ft['method']} fine-tuning, full-sequence loss on plain text, lr {ft['lr']}, {ft['epochs']} "
        f"epochs, on 1 statement per fact, that statement ×{cfg['paraphrases']} or {cfg['paraphrases']} "
        "paraphrases. "
        f"RAG: top-{cfg['top_k']} statements by {cfg['embedder']} cosine similarity in the prompt. Greedy "
        "answers; correct = the value appears as a word and no other value of that attribute does. "
        "Accuracy [Wilson 95% CI].",
        "",
        "| arm | accuracy | " + " | ".join(attrs) + " |",
        "|---|---|" + "---|" * len(attrs),
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['arm']} | {fmt_ci(r['accuracy'], 2)} | "
            + " | ".join(f"{r['by_attribute'][a]['mean']:.2f}" for a in attrs)
            + " |"
        )
    lines += [
        "",
        "Retrieval: "
        + ", ".join(f"recall@{k} {v:.2f}" for k, v in report["recall"].items())
        + f" ({report['questions']} questions; {report.get('retrieval_seconds', 0)} s to embed and search).",
        *_retrievers(report),
        "",
        "## Training",
        "",
        "| model | examples | steps | loss first → last | seconds |",
        "|---|---|---|---|---|",
    ]
    for k, t in report["train"].items():
        lines.append(
            f"| {k} | {t['examples']} | {t['optimizer_steps']} | {t['loss_first']} → {t['loss_last']} | "
            f"{t['seconds']} |"
        )
    lines += ["", "## Samples", "", "| arm | question | answer | value |", "|---|---|---|---|"]
    for r in report["rows"]:
        for e in r["examples"][:2]:
            ans = e["answer"].replace("|", "\\|").replace("\n", " ").strip()[:80]
            lines.append(f"| {r['arm']} | {e['question']} | {ans} | {e['value']} |")
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
        + [f"- {r['arm']}: `{r['model']}`" for r in report["rows"]]
        + [""]
    )
    return "\n".join(lines)


def _retrievers(report: dict) -> list[str]:
    """The extra retrievers' recall, a table after the main retriever's (nothing when there are none)."""
    extra = report.get("retrievers") or {}
    if not extra:
        return []
    ks = list(report["recall"])
    lines = [
        "",
        f"Extra retrievers (each arm: the base model with that retriever's top-{report['config']['top_k']} "
        "statements in the prompt):",
        "",
        "| arm | retriever | " + " | ".join(f"recall@{k}" for k in ks) + " | seconds |",
        "|---|---|" + "---|" * len(ks) + "---|",
    ]
    for arm, r in extra.items():
        lines.append(
            f"| {arm} | `{r['retriever']}` | "
            + " | ".join(f"{r['recall'][k]:.2f}" for k in ks)
            + f" | {r['seconds']} |"
        )
    return lines


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    attrs = report["attributes"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
    m = [r["accuracy"]["mean"] for r in rows]
    err = yerr([r["accuracy"] for r in rows])
    colors = [
        "#6b7280"
        if r["arm"] == "base"
        else "#059669"
        if r["arm"].startswith("RAG")
        else "#2563eb"
        if "RAG" not in r["arm"]
        else "#7c3aed"
        for r in rows
    ]
    a.barh(range(len(rows)), m, xerr=err, color=colors, capsize=3)
    a.set_yticks(range(len(rows)), [r["arm"] for r in rows], fontsize=8)
    a.invert_yaxis()
    a.set_xlim(0, 1)
    a.set_xlabel("accuracy on held-out questions (Wilson 95% CI)")
    a.set_title("Fine-tuning or retrieval?")
    w = 0.8 / len(rows)
    for i, r in enumerate(rows):
        b.bar(
            [j + i * w for j in range(len(attrs))],
            [r["by_attribute"][x]["mean"] for x in attrs],
            w,
            label=r["arm"],
            color=f"C{i}",
        )
    b.set_xticks([j + 0.4 - w / 2 for j in range(len(attrs))], attrs)
    b.set_ylim(0, 1)
    b.set_ylabel("accuracy")
    b.set_title("By attribute")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
