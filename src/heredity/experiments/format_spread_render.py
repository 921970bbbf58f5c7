"""The format-spread report card: ``markdown`` (spread per model, accuracy per format, rank agreement with the
parent, the declared tests, Thompson sampling vs exhaustive, the published anchors) and ``plot``. Rendering
only: every number shown is computed by ``heredity.experiments.format_spread``."""

from __future__ import annotations

from heredity.reports.stats import fmt_ci, fmt_num, fmt_p


def markdown(report: dict) -> str:
    cfg = report["config"]
    lo, fu = cfg["lora"], cfg["full"]
    items = ", ".join(f"{n} {t}" for t, n in report["items"].items())
    lines = [
        "# format-spread",
        "",
        f"Parent {cfg['model']}; {len(report['formats'])} formats from the grammar (the plain one first), "
        f"each a version of the stored prompt `format-spread`; test items: {items} (multiple choice, "
        f"{cfg['shots']} worked examples in the same format before each). A model answers with the option "
        "whose text has the highest log-probability after the answer field (summed over its tokens; raw "
        "text, no chat template). "
        f"Children trained on {cfg['train_items']} items per task in the plain format only: LoRA "
        f"(r {lo['lora_r']}, lr {lo['lr']}, {lo['epochs']:g} epoch) and full (lr {fu['lr']}, "
        f"{fu['epochs']:g} epoch)"
        + (", and their linear merge (0.5 / 0.5)" if cfg["merge"] else "")
        + f", {cfg['seeds']} training seed(s); the unrelated model: {cfg['unrelated']} trained from scratch "
        "on the same rows. Accuracy: Wilson 95% intervals; spread: percentile bootstrap over items; every p "
        "is over items (unit: items), a statement about these models.",
        "",
        *_spread_table(report),
        *_format_table(report),
        *_agreement(report),
        *_search(report),
        "## Published anchors (Sclar et al. 2024)",
        "",
        "| finding | published |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in report["published"].items()],
        "",
        "Our models are 135M parameters and our tasks small; the direction of each finding is comparable, "
        "not its size.",
        "",
        f"**Outcome** (Holm over the declared family of {len(report['tests'])} tests; unit: items). "
        f"{report['outcome']}.",
        "",
        f"Run time {report.get('seconds', 0):.0f} s.",
        "",
        "## Artifacts",
        "",
        *[f"- {label}: `{mid}`" for label, mid in report.get("models", {}).items()],
        f"- the {len(report['formats'])} format templates: "
        + ", ".join(f"`{f['template']}`" for f in report["formats"][:3])
        + ", …",
        "",
    ]
    return "\n".join(lines)


def _holm(report: dict, name: str) -> str:
    return next((fmt_p(t["holm_p"]) for t in report["tests"] if t["name"] == name), "—")


def _spread_table(report: dict) -> list[str]:
    lines = [
        "## Spread per model",
        "",
        "| model | mean accuracy over formats | worst format | best format | spread [95% CI] | spread if "
        "format did not matter | Holm p (unit: items) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, accs in report["accuracy"].items():
        s = report["spread"][label]
        mean = sum(a["mean"] for a in accs) / len(accs)
        ci = fmt_ci({"mean": s["spread"], "lo": s["lo"], "hi": s["hi"]})
        lines.append(
            f"| {label} | {mean:.3f} | #{s['worst']} {accs[s['worst']]['mean']:.3f} | #{s['best']} "
            f"{accs[s['best']]['mean']:.3f} | {ci} | {s['null_mean']:.3f} | "
            f"{_holm(report, f'spread of {label}')} |"
        )
    return [*lines, ""]


def _format_table(report: dict) -> list[str]:
    models = list(report["accuracy"])
    lines = [
        "## Accuracy per format",
        "",
        "| # | format | " + " | ".join(models) + " |",
        "|---|---|" + "---|" * len(models),
    ]
    for f in report["formats"]:
        cells = [fmt_ci(report["accuracy"][m][f["index"]], 2) for m in models]
        desc = f["describe"].replace("|", "\\|")
        lines.append(f"| {f['index']} | `{desc}` | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _agreement(report: dict) -> list[str]:
    lines = [
        "## Does a child keep its parent's ranking of formats?",
        "",
        "ρ and τ are over formats, with every model scored on the same items, so a child that keeps its "
        "parent's answers to particular items agrees with it on formats through those items too. The column "
        "*disjoint items* removes that: the parent's per-format accuracy on a random half of the items "
        "against the other model's on the other half (mean over 500 splits); the parent against itself on "
        f"disjoint halves gives {fmt_num(report.get('split_half'), 2)} (Spearman-Brown over all items: "
        f"{fmt_num(report['reliability'], 2)}), the most any model can reach on that column.",
        "",
        "| model | Spearman ρ with the parent | Kendall τ | ρ on disjoint items | ρ − ρ(parent, unrelated) "
        "| Holm p (unit: items) |",
        "|---|---|---|---|---|---|",
    ]
    for label, a in report["agreement"].items():
        rho, tau = a["spearman"], a["kendall"]
        d = report["inheritance"].get(label)
        diff = fmt_ci({"mean": d["diff"], "lo": d["lo"], "hi": d["hi"]}, 2) if d else "—"
        lines.append(
            f"| {label} | {fmt_ci({'mean': rho['estimate'], 'lo': rho['lo'], 'hi': rho['hi']}, 2)} | "
            f"{fmt_ci({'mean': tau['estimate'], 'lo': tau['lo'], 'hi': tau['hi']}, 2)} | "
            f"{fmt_num((report.get('cross_half') or {}).get(label), 2)} | {diff} | "
            f"{_holm(report, f'ρ(parent, {label}) − ρ(parent, unrelated)') if d else '—'} |"
        )
    for kind, ci in (report.get("across_seeds") or {}).items():
        lines.append(
            f"\nOver training seeds, {kind}: ρ = {fmt_ci(ci, 2)} (unit: training seeds, n = {ci['n']})."
        )
    return [*lines, ""]


def _search(report: dict) -> list[str]:
    s = report["search"]
    lines = [
        "## Finding the best and worst format under a budget (the parent)",
        "",
        f"Thompson sampling (FormatSpread's search) with {s['budget']} of the {s['exhaustive']} item "
        f"evaluations, replayed {s['runs']} times in random item orders on the exhaustive results, against "
        "uniform allocation of the same budget.",
        "",
        "| target | exhaustive accuracy | Thompson: found it | Thompson: median regret | uniform: found it "
        "| uniform: median regret |",
        "|---|---|---|---|---|---|",
    ]
    for find in ("best", "worst"):
        r = s[find]
        lines.append(
            f"| {find} format | {r['exhaustive']:.3f} | {r['thompson_found']:.0%} | "
            f"{r['thompson_regret']:.3f} | {r['uniform_found']:.0%} | {r['uniform_regret']:.3f} |"
        )
    return [*lines, ""]


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = {m: [a["mean"] for a in v] for m, v in report["accuracy"].items()}
    order = sorted(range(len(acc["parent"])), key=lambda i: acc["parent"][i])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2))
    for m, v in acc.items():
        ax.plot(
            range(len(order)), [v[i] for i in order], marker="o", ms=3, lw=2 if m == "parent" else 1, label=m
        )
    ax.set_xticks(range(len(order)), [str(i) for i in order], fontsize=7)
    ax.set_xlabel("format (ordered by the parent's accuracy)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy per format")
    ax.legend(fontsize=7)
    for m, v in acc.items():
        if m != "parent":
            bx.scatter(
                acc["parent"],
                v,
                s=14,
                label=f"{m} (ρ = {fmt_num(report['agreement'][m]['spearman']['estimate'], 2)})",
            )
    bx.set_xlabel("parent's accuracy per format")
    bx.set_ylabel("other model's accuracy per format")
    bx.set_title("does a model keep its parent's ranking?")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
