"""The synthetic-embeddings report card: ``markdown`` (the arm table per corpus, the declared contrasts, the
inheritance measures, the writer's yield, the published anchors) and ``plot`` (one panel per corpus).
Rendering only: every number shown is computed by ``heredity.experiments.synthetic_embeddings``."""

from __future__ import annotations

from heredity.reports.card import yerr
from heredity.reports.stats import fmt_ci, fmt_num, fmt_p

METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10")


def markdown(report: dict) -> str:
    cfg = report["config"]
    ft = cfg["finetune"]
    lines = [
        "# synthetic-embeddings",
        "",
        f"Writer {cfg['writer']} (brainstorm: {cfg['tasks']} samples at T = "
        f"{cfg['brainstorm_temperature']}; examples at T = {cfg['write_temperature']}, JSON schema, grounded "
        f"on a passage's first {cfg['passage_chars']} characters). Students: {cfg['encoder']} fine-tuned by "
        "sentence-transformers' trainer, MultipleNegativesRankingLoss at "
        f"τ = {ft['temperature']} (scale {1 / ft['temperature']:g}), lr {ft['lr']}, {ft['epochs']:g} epochs, "
        f"batch {ft['batch_size']}, {cfg['rows']} rows per arm, {cfg['seeds']} training seeds per arm (the "
        "seed orders the batches; the writer's data is one draw). "
        "Trained arms: mean over seeds [t 95% CI, unit: training seeds]; references (one model): mean over "
        "queries [t 95% CI; Wilson for a 0/1 measure; unit: queries].",
        "",
        *_other_students(cfg),
    ]
    for name, c in report["corpora"].items():
        lines += _corpus_table(report, name, c)
    lines += _mteb(report) + _contrasts(report) + _inheritance(report) + _writer(report) + _published(report)
    lines += [
        "",
        f"**Outcome** (every verdict: a paired t over training seeds, unit: training seeds, n = "
        f"{report['config']['seeds']} per arm). {report['outcome']}.",
        "",
        f"Run time {report.get('seconds', 0):.0f} s.",
        "",
        "## Artifacts",
        "",
        *[f"- {arm}, seed 0: `{ms[0]}`" for arm, ms in report["students"].items()],
        "",
    ]
    return "\n".join(lines)


def _other_students(cfg: dict) -> list[str]:
    """The optional arms' recipes: other writers, the tuned writer, the decoder encoder."""
    out = []
    if cfg.get("writers") or cfg.get("tuned_writer"):
        tw = cfg["tuned_writer_finetune"]
        tuned = (
            f"; the writer LoRA-tuned (r {tw['lora_r']}, {tw['epochs']:g} epochs, lr {tw['lr']}) on "
            "program-written examples of training sections no writer is shown"
            if cfg.get("tuned_writer")
            else ""
        )
        out.append(
            f"Other writers, each writing the full recipe's data on the same passages: "
            f"{', '.join(cfg.get('writers') or []) or 'none given'}{tuned}."
        )
    if cfg.get("decoder"):
        d = cfg["decoder_finetune"]
        out.append(
            f"Decoder encoder: {cfg['decoder']}, the end-of-sequence token appended and its last hidden "
            f"state pooled (E5-mistral's recipe), LoRA r {d['lora_r']} (alpha {d['lora_alpha']}, dropout "
            f"{d['lora_dropout']}) at lr {d['lr']}, {d['epochs']:g} epochs, trained on the arms "
            f"{', '.join(cfg['decoder_arms'])}; the decoder untouched is its reference."
        )
    return [*out, ""] if out else []


def _corpus_table(report: dict, name: str, c: dict) -> list[str]:
    lines = [
        f"## {name}: {c['documents']} documents, {c['queries']} queries",
        "",
        f"Instruction: *{c['instruction']}*.",
        "",
        "| arm | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for arm in report["arms"]:
        row = report["table"][name][arm]
        lines.append(f"| {arm} | " + " | ".join(fmt_ci(row[m], 3) for m in METRICS) + " |")
    return [*lines, ""]


def _mteb(report: dict) -> list[str]:
    """MTEB's own scores on the user's corpora, beside heredity's evaluator (the same models)."""
    lines = []
    for name, arms in (report.get("mteb") or {}).items():
        lines += [
            f"## {name}: MTEB's own scores",
            "",
            "`mteb.evaluate` on a local `AbsTaskRetrieval` over the same files (binary relevance); a trained "
            "arm's value is the mean over its training seeds. The nDCG@10 column of the table above is "
            "heredity's evaluator on the same models.",
            "",
            "| arm | nDCG@10 | MRR@10 | recall@10 | MAP@10 |",
            "|---|---|---|---|---|",
            *[
                f"| {arm} | "
                + " | ".join(
                    fmt_num(v[k], 3) for k in ("ndcg_at_10", "mrr_at_10", "recall_at_10", "map_at_10")
                )
                + " |"
                for arm, v in arms.items()
            ],
            "",
        ]
    return lines


def _contrasts(report: dict) -> list[str]:
    lines = [
        "## Contrasts (declared before the run; Holm over the family)",
        "",
        "| contrast | Δ (unit: training seeds) | Holm p | verdict | Δ (unit: queries; BCa bootstrap) "
        "| p (unit: queries; sign-flip permutation) |",
        "|---|---|---|---|---|---|",
    ]
    for t in report["contrasts"]:
        s, q = t["seeds"], t["queries"]
        mde = f" (smallest detectable: {fmt_num(t['mde'])})" if t.get("mde") is not None else ""
        lines.append(
            f"| {t['name']} | {fmt_ci({'mean': s['diff'], 'lo': s['lo'], 'hi': s['hi']})} (n = {s['n']}) | "
            f"{fmt_p(t['holm_p'])} | {t['verdict']['words']}{mde} | "
            f"{fmt_ci({'mean': q['diff'], 'lo': q['lo'], 'hi': q['hi']})} (n = {q['n']}) | {fmt_p(q['p'])} |"
        )
    note = report.get("spread_note")
    return [*lines, "", *([f"Note: {note}.", ""] if note else [])]


def _inheritance(report: dict) -> list[str]:
    """Per-topic nDCG@10 and the swap share, the two traces of a planted bias."""
    facts = report["table"].get("facts", {})
    pydoc = report["table"].get("pydoc", {})
    topics = sorted({t for r in facts.values() for t in r["topics"]} | {"pydoc"})
    lines = [
        "## What the students inherit",
        "",
        "nDCG@10 per topic, and the swap share: of the capital and founding-year queries, those whose first "
        "document is the same country's other attribute.",
        "",
        "| arm | facts share of its rows | " + " | ".join(topics) + " | swap share |",
        "|---|---|" + "---|" * len(topics) + "---|",
    ]
    rows = report.get("writer", {}).get("rows", {})
    for arm in report["arms"]:
        per = {**facts.get(arm, {}).get("topics", {}), **pydoc.get(arm, {}).get("topics", {})}
        share = rows.get(arm, {}).get("facts_share")
        swap = facts.get(arm, {}).get("swap")
        lines.append(
            f"| {arm} | {fmt_num(share, 2) if share is not None else '—'} | "
            + " | ".join(fmt_num(per.get(t), 3) for t in topics)
            + f" | {fmt_ci(swap, 3) if swap else '—'} |"
        )
    return [*lines, ""]


def _writer(report: dict) -> list[str]:
    w = report.get("writer", {})
    if not w:
        return []
    lines = [
        "## The writer",
        "",
        f"Brainstorm: {w['task_counts']}; {len(w['tasks'])} distinct tasks, e.g. "
        + "; ".join(f"*{t[:90]}*" for t in w["tasks"][:4])
        + ".",
        "",
        "Examples over the training passages (what the schema could not save is counted): "
        f"{w['pool_counts']}; with one generic task: {w['no_brainstorm_counts']}.",
        "",
        "| task | query | positive | hard negative |",
        "|---|---|---|---|",
    ]
    for e in w["examples"][:4]:
        cells = [e[k].replace("|", "\\|")[:90] for k in ("task", "query", "positive", "hard_negative")]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _published(report: dict) -> list[str]:
    return [
        "## Published anchors (Wang et al. 2024, E5-mistral-7b, MTEB)",
        "",
        "| measure | published |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in report["published"].items()],
        "",
        "Our corpora are small and offline; only the direction of each ablation is comparable.",
        "",
    ]


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["corpora"])
    arms = report["arms"]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 0.45 * len(arms) + 1.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        cis = [report["table"][name][a]["ndcg@10"] for a in arms]
        colors = ["#6b7280" if a in ("untouched", "BM25", "decoder untouched") else "#2563eb" for a in arms]
        colors = [("#dc2626" if a.startswith("writer") else c) for a, c in zip(arms, colors, strict=True)]
        ax.barh(range(len(arms)), [c["mean"] for c in cis], xerr=yerr(cis), color=colors, capsize=3)
        ax.set_yticks(range(len(arms)), arms, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("nDCG@10 (95% CI)")
        ax.set_title(f"{name}: {report['corpora'][name]['queries']} held-out queries")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
