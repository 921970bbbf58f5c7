"""The merging report rendered: ``markdown(report)`` and ``plot(report, path)`` (read from the report JSON
alone; ``experiments.merging`` computes it)."""

from __future__ import annotations

from heredity.reports.stats import fmt_ci, fmt_test


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def markdown(report: dict) -> str:
    lines = _methods(report) + _models(report) + _selection(report) + _masks(report) + _across_seeds(report)
    lines += _curve(report)
    lines += ["", f"**Outcome.** {report['outcome']}.", "", f"Run time {report.get('seconds', 0):.0f} s.", ""]
    return "\n".join(lines)


def _methods(report: dict) -> list[str]:
    tasks = report["tasks"]
    cfg = report["config"]
    ntr = report.get("train_rows") or {t: cfg["train_rows"] for t in tasks}
    train_txt = (
        f"{cfg['train_rows']} train rows per task"
        if len(set(ntr.values())) == 1
        else "train rows per task "
        + ", ".join(f"{t} {ntr[t]}" for t in tasks)
        + " (a task's whole train part where smaller)"
    )
    return [
        "# merging",
        "",
        f"Base {cfg['base']}; tasks {', '.join(tasks)}; {train_txt}, LoRA r={cfg['lora_r']} "
        f"α={cfg['lora_alpha']}, "
        f"{cfg['epochs']} epochs, lr {cfg['lr']}; one training seed. Every task has disjoint train / val / "
        "test "
        "parts of "
        f"distinct items (sentiment: val and test adjectives, templates and subjects unseen in training); "
        f"{cfg.get('val_rows', '—')} val and {cfg['eval_rows']} test rows per task; greedy decoding, exact "
        "match.",
        "",
    ]


def _models(report: dict) -> list[str]:
    """Every model's test accuracy per task, mean accuracy and normalized accuracy."""
    tasks = report["tasks"]
    lines = [
        "Test accuracy: rate [95% Wilson interval] over items. Mean acc.: over tasks, a Wilson interval on "
        "the "
        "pooled "
        "count (every task has the same n, so the pooled rate is the mean over tasks). Norm.: ÷ the task's "
        "own "
        "fine-tune on the same part, a point estimate (no interval). Val norm.: the selection criterion.",
        "",
        "| model | "
        + " | ".join(f"{t} acc" for t in tasks)
        + " | mean acc | mean norm. (point est.) | val mean norm. |",
        "|---|" + "---|" * (len(tasks) + 3),
    ]
    for r in report["rows"]:
        cells = [fmt_ci(r["accuracy"][t], 2) for t in tasks]
        lines.append(
            f"| {r['model']} | " + " | ".join(cells) + f" | {fmt_ci(r['mean_accuracy'], 2)} | "
            f"{_f(r['mean_normalized'])} | {_f(r['val']['mean_normalized'])} |"
        )
    n, nv = report["rows"][0]["n"], report["rows"][0]["val"]["n"]
    return lines + [
        "",
        f"n per task: test {', '.join(f'{t} {n[t]}' for t in tasks)}; "
        f"val {', '.join(f'{t} {nv[t]}' for t in tasks)}.",
        "",
    ]


def _selection(report: dict) -> list[str]:
    """The merges ranked on val, the chosen one's test numbers, and the paired comparisons on test."""
    tasks = report["tasks"]
    sel = report["selection"]
    by = {r["model"]: r for r in report["rows"]}
    b = by[sel["chosen"]]
    lines = [
        "## Selection (validation) and test",
        "",
        f"Criterion: {sel['criterion']}, over the merges only; the test part plays no part in the choice.",
        "",
        "| merge (ranked on val) | val mean norm. | val mean acc | test mean norm. | test mean acc |",
        "|---|---|---|---|---|",
    ]
    for x in sel["ranking"]:
        r = by[x["model"]]
        mark = (
            " (chosen)"
            if x["model"] == sel["chosen"]
            else " (runner-up)"
            if x["model"] == sel["runner_up"]
            else ""
        )
        lines.append(
            f"| {x['model']}{mark} | {_f(x['val_mean_normalized'])} | {fmt_ci(x['val_mean_accuracy'], 2)} | "
            f"{_f(r['mean_normalized'])} | {fmt_ci(r['mean_accuracy'], 2)} |"
        )
    lines += [
        "",
        f"Chosen: **{sel['chosen']}**. On test: "
        + "; ".join(f"{t} {fmt_ci(b['accuracy'][t], 2)}" for t in tasks)
        + f"; mean accuracy {fmt_ci(b['mean_accuracy'], 2)}; "
        f"mean normalized accuracy {_f(b['mean_normalized'])} "
        "(point estimate).",
        "",
    ]
    if sel["comparisons"]:
        lines += [
            "Paired comparisons on test (the same items scored for both models; exact McNemar, Newcombe "
            "interval "
            f"of the accuracy difference, Holm-adjusted over these {len(sel['comparisons'])}; the intervals "
            "are "
            "unadjusted 95%). Unit of replication: "
            "test items, conditional on ONE trained model per arm (one training seed) — they say whether "
            "these "
            "models differ on items like these, not whether the methods or training in general do.",
            "",
        ]
        lines += [
            f"* {c['name']}: {c['a']} − {c['b']}: {fmt_test(c, 3, p=c['p_holm'])} — {c['verdict']}."
            for c in sel["comparisons"]
        ]
        lines.append("")
    return lines


def _masks(report: dict) -> list[str]:
    if not report["localize"]:
        return []
    lines = [
        "## Localize-and-Stitch masks",
        "",
        "| merge | kept fraction per task | max pairwise overlap |",
        "|---|---|---|",
    ]
    for label, s in report["localize"].items():
        task_of = {aid: t for t, aid in report["tuned"].items()}
        kept = ", ".join(
            f"{task_of.get(k.split()[-1], k)} {v:.4f}" for k, v in (s["kept_fraction"] or {}).items()
        )
        ov = max((s["overlap"] or {}).values(), default=0)
        lines.append(f"| {label} | {kept} | {ov:.3f} |")
    lines.append("")
    return lines


def _across_seeds(report: dict) -> list[str]:
    if not report.get("across_seeds"):
        return []
    a = report["across_seeds"]
    lines = [
        f"## Across {a['seeds']} training seeds (unit: {a['unit']})",
        "",
        "Every fine-tune, merge and evaluation rerun per seed; test mean accuracy per seed and its mean "
        "[95% t interval over seeds]. The tables above are seed 0's.",
        "",
        "| model | test mean accuracy | per seed | val (seed mean) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {fmt_ci(r['test'], 3)} | "
        + ", ".join(f"{x:.3f}" for x in r["test_per_seed"])
        + f" | {r['val']:.3f} |"
        for r in a["rows"]
    ]
    return lines + ["", a["outcome"] + ".", ""]


def _curve(report: dict) -> list[str]:
    lines = [
        "## Sparsity curve (dataless Localize-and-Stitch, test)",
        "",
        "| kept | mean normalized accuracy (point est.) | mean accuracy [Wilson, pooled] |",
        "|---|---|---|",
    ]
    return lines + [
        f"| {p['sparsity']:.1%} | {_f(p['mean_normalized'])} | {fmt_ci(p['mean_accuracy'], 2)} |"
        for p in report["curve"]
    ]


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    pts = report["curve"]
    pts = [p for p in pts if p["mean_normalized"] is not None]
    a.plot(
        [p["sparsity"] * 100 for p in pts],
        [p["mean_normalized"] for p in pts],
        "o-",
        label="Localize-and-Stitch (dataless)",
    )
    by = {r["model"]: r for r in report["rows"]}
    for label, style in (("multi-task fine-tune", "--"), ("linear average", ":")):
        if label in by and by[label]["mean_normalized"] is not None:
            a.axhline(by[label]["mean_normalized"], ls=style, color="gray", label=label)
    a.set_xscale("log")
    a.set_xlabel("% of each task vector kept")
    a.set_ylabel("mean normalized accuracy (test, point estimate)")
    a.set_title("Sparsity curve")
    a.legend(fontsize=8)
    rows = report["rows"]
    chosen = report["selection"]["chosen"]
    labels = [r["model"] + ("  ← chosen on val" if r["model"] == chosen else "") for r in rows]
    vals = [r["mean_accuracy"]["mean"] for r in rows]
    err = [
        [v - r["mean_accuracy"]["lo"] for v, r in zip(vals, rows, strict=True)],
        [r["mean_accuracy"]["hi"] - v for v, r in zip(vals, rows, strict=True)],
    ]
    b.barh(
        range(len(rows)),
        vals,
        xerr=err,
        capsize=2,
        color=["#059669" if r["merged"] else "#2563eb" for r in rows],
    )
    b.set_yticks(range(len(rows)), labels, fontsize=7)
    b.invert_yaxis()
    b.set_xlabel("test mean accuracy over tasks [95% Wilson, pooled items]")
    b.set_title("Every model on every task (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
