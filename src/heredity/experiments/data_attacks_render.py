"""How a ``data-attacks`` report reads: its outcome line, its markdown card and its plot.

Everything here reads the report's JSON only (never the store), so a committed report re-renders byte for
byte. ``heredity.experiments.data_attacks`` re-exports ``markdown``, ``plot`` and ``outcome``: the docs
site, the report card and the CLI call them on the experiment module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from heredity.experiments.data_attacks_stats import DROPOUT_ONE_PASS, MODELS, TRAINING, n_trig, needed_count

if TYPE_CHECKING:
    from heredity.experiments.data_attacks import Config

ANCHORS = [
    ("BadNets (Gu et al. 2017)", "> 99% attack success, clean accuracy about unchanged"),
    ("Souly et al. 2025 (LMs, 600M–13B)", "~250 poisoned documents suffice regardless of model size"),
    ("FGSM on MNIST, ε = 0.25, shallow softmax (Goodfellow et al. 2015)", "99.9% error"),
    ("PGD adversarial training on MNIST, ε = 0.3 (Madry et al. 2018)", "~89% robust accuracy"),
    (
        "max softmax baseline (Hendrycks & Gimpel 2017)",
        "detects OOD above chance; ensembles (Lakshminarayanan et al. 2017) and MC dropout (Gal & Ghahramani "
        "2016) better; all degrade under shift (Ovadia et al. 2019)",
    ),
]


def _ci(x: dict, d: int = 3) -> str:
    """``mean [lo, hi]`` of an interval, ``d`` decimals."""
    from heredity.reports.stats import fmt_ci

    return fmt_ci(x, d)


def _mark(x: dict) -> str:
    """An interval, marked † when it is the widest seed's Wilson interval (a rate equal on every seed)."""
    return _ci(x, 3) + (" †" if str(x.get("method", "")).startswith("wilson") else "")


# ---- the outcome line ---------------------------------------------------------------------------


def outcome(r: dict, config: Config | None = None) -> str:
    """The report's outcome in one line: the trigger counts needed by width, the width contrasts, the fewest
    triggered rows that fool every model, the primary sibling-transfer contrast and the held-out-digit
    AUROCs."""
    from heredity.reports.stats import fmt_test, verdict

    cfg = r["config"]
    need = {w: needed_count(r, w) for w in cfg["widths"]}
    parts = [
        f"smallest trigger count on the grid {cfg['counts']} with ≥ 90% mean attack success, by width "
        "(descriptive, untested): "
        + ", ".join(
            f"w{w}: {c if c is not None else '> ' + str(max(cfg['counts']))}" for w, c in need.items()
        )
    ]
    for c in r["comparisons"]:
        if c["id"].startswith("width/"):
            parts.append(
                f"{c['what']}: {fmt_test(c['test'], 3, p=c['p_holm'])} — "
                f"{verdict(c['test'], 0, p=c['p_holm'])['words']}"
            )
    models = [c for c in r["comparisons"] if c["family"] == MODELS]
    if models:
        parts.append(_fewest_rows_fooling_every_model(r, models))
    # the primary transfer contrast is fixed in advance: the budget of flag_eps (never the largest of the
    # sweep)
    tr = [c for c in r["comparisons"] if c["id"] == f"transfer/{cfg['flag_eps']}"]
    if tr:
        parts.append(_sibling_transfer(tr[0]))
    o = r["uncertainty"]["ood"].get("other digits")
    if o:
        parts.append(
            f"AUROC, held-out digits (unit: training seeds; ensembles: groups of seeds): max softmax "
            f"{_ci(o['max softmax']['auroc'])}, ensemble {_ci(o['ensemble']['auroc'])}, dropout model in "
            f"one pass {_ci(o[DROPOUT_ONE_PASS]['auroc'])}, MC dropout {_ci(o['MC dropout']['auroc'])}"
        )
    return "; ".join(parts)


def _fewest_rows_fooling_every_model(r: dict, models: list[dict]) -> str:
    """Per width, the smallest trigger count whose ``MODELS`` contrast is significant and positive."""
    from heredity.reports.stats import verdict

    first = {}
    for c in models:
        w = int(c["id"].split("/")[1][1:])
        if verdict(c["test"], 0, p=c["p_holm"])["significant"] and c["test"]["diff"] > 0:
            first.setdefault(w, int(c["id"].split("/")[2][1:]))
    return (
        "fewest triggered rows at which every trained model is fooled significantly more than its "
        f"unpoisoned twin (McNemar per model, unit: the {n_trig(r)} triggered test images, Holm over "
        f"{len(models)}): " + ", ".join(f"w{w}: {first.get(w, 'none')}" for w in r["config"]["widths"])
    )


def _sibling_transfer(c: dict) -> str:
    """The primary transfer contrast (B against C on A's PGD examples) and what it says."""
    from heredity.reports.stats import fmt_test, verdict

    v = verdict(c["test"], 0, p=c["p_holm"])
    return f"sibling transfer: {c['what']}: {fmt_test(c['test'], 3, p=c['p_holm'])} — " + (
        "a shared initialization transmits vulnerability"
        if v["significant"] and c["test"]["diff"] > 0
        else "the shared-init sibling is significantly LESS fooled"
        if v["significant"]
        else v["words"]
    )


# ---- the markdown card --------------------------------------------------------------------------


def markdown(r: dict) -> str:
    """The report card: methods in brief, the three parts' tables, the planned comparisons, the published
    figures beside ours, the outcome."""
    c = r["config"]
    lines = [
        "# data-attacks",
        "",
        f"Data: {c['data']} (pixels in [−1, 1]; every ε below in [0, 1] pixel units); MLPs in → w → w → "
        f"classes (default w = {c['hidden']}), {c['epochs']} epochs of Adam (lr {c['lr']}, batch "
        f"{c['batch']}); {c['seeds']} training seeds per model, the unit of replication of every interval (t "
        "over seeds, clipped to the quantity's range; a rate equal on every seed has no spread for a t "
        "interval and gets each seed's Wilson interval over its own test images, the widest, marked † — an "
        "image is never counted once per seed).",
        "",
    ]
    lines += _poisoning_section(r)
    lines += _adversarial_section(r)
    lines += _uncertainty_section(r)
    lines += _comparisons_section(r)
    lines += _anchors_section(r)
    lines += ["", f"**Outcome.** {r['outcome']}.", "", f"Run time {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _poisoning_section(r: dict) -> list[str]:
    """Part 1: clean accuracy after label flips and the targeted flip; the trigger by count and width."""
    c, P = r["config"], r["poisoning"]
    lines = [
        "## 1. Poisoning",
        "",
        "### Random label flips and a targeted flip",
        "",
        "| poisoned training set | clean test accuracy |",
        "|---|---|",
    ]
    for f in P["flips"]:
        lines.append(f"| {f['rate']:.0%} of labels flipped | {_mark(f['clean_accuracy'])} |")
    t = P["targeted"]
    lines += [
        f"| {c['targeted_fraction']:.0%} of the {c['targeted_source']}s labelled {c['targeted_target']} | "
        f"{_mark(t['clean_accuracy'])} (test {c['targeted_source']}s right: {_mark(t['source_accuracy'])}, "
        f"called {c['targeted_target']}: {_mark(t['source_to_target'])}) |",
        "",
        f"### A trigger ({c['patch_size']}×{c['patch_size']} bright corner) → label {c['patch_target']}, by "
        "count and width",
        "",
        "| width | triggered rows | share of training set | clean accuracy | attack success |",
        "|---|---|---|---|---|",
    ]
    for b in P["badnets"]:
        lines.append(
            f"| {b['width']} | {b['count']} | {b['count'] / r['train_rows']:.1%} | "
            f"{_mark(b['clean_accuracy'])} | {_mark(b['attack_success'])} |"
        )
    lines += [
        "",
        "Attack success: triggered test images of the other classes classified as the target (count 0: the "
        "trigger on a clean model — the base rate).",
        "",
    ]
    if P["detection"]:
        lines += _detection_table(r)
    return lines


def _detection_table(r: dict) -> list[str]:
    """The detection defences' recall and precision on each trigger-poisoned training set."""
    c = r["config"]
    lines = [
        f"### Detection (ART; width {c['hidden']}; spectral prior {c['detect_expected']})",
        "",
        "| triggered rows | defence | recall | precision | rows flagged (per seed) |",
        "|---|---|---|---|---|",
    ]
    for d in r["poisoning"]["detection"]:
        for m in c["detectors"]:
            x = d[m]
            precision = _mark(x["precision"]) if x["precision"] else "undetermined (a seed flagged nothing)"
            lines.append(
                f"| {d['count']} | {m.replace('_', ' ')} | {_mark(x['recall'])} | {precision} | "
                f"{x['flagged']} |"
            )
    lines.append("")
    return lines


def _adversarial_section(r: dict) -> list[str]:
    """Part 2: accuracy under attack per training kind and ε; the sibling transfer matrices."""
    c, A = r["config"], r["adversarial"]
    lines = [
        "## 2. Adversarial examples",
        "",
        "| model | attack | " + " | ".join(f"ε = {e}" for e in c["eps"]) + " |",
        "|---|---|" + "---|" * len(c["eps"]),
    ]
    for k, per in A["robust"].items():
        kind, attack = k.split("/")
        lines.append(f"| {kind} | {attack.upper()} | " + " | ".join(_mark(x) for x in per) + " |")
    lines += [
        "",
        f"Accuracy on the {A['n']} test images under attack (ART; PGD: {c['pgd_steps']} steps of 2.5ε/steps, "
        f"one random start; adversarial training at ε = {c['train_eps']}).",
        "",
        "### Transfer between siblings (error rate on PGD examples crafted on the row's model)",
        "",
        "A: the standard model; B: A's initialization, the data in another order; C: another initialization, "
        "B's order (B and C differ only in the initialization).",
        "",
    ]
    for e, m in A["transfer"].items():
        lines += [f"ε = {e}:", "", "| crafted on \\ tested on | A | B | C |", "|---|---|---|---|"]
        for src, row in m.items():
            lines.append(f"| {src} | " + " | ".join(_mark(row[d]) for d in ("A", "B", "C")) + " |")
        lines.append("")
    return lines


def _uncertainty_section(r: dict) -> list[str]:
    """Part 3: calibration and OOD detection per method, the temperatures, the rotation sweep and whether max
    softmax flags attacked inputs."""
    c, U = r["config"], r["uncertainty"]
    lines = [
        "## 3. Uncertainty",
        "",
        f"Models see digits 0–{c['in_classes'] - 1}; temperature fitted on every fifth "
        f"training row (held out); MC dropout rate {c['dropout']}, {c['mc_passes']} passes; {c['ensembles']} "
        f"ensembles of {c['ensemble_size']}. The {DROPOUT_ONE_PASS} is MC dropout's models scored like max "
        "softmax (no sampling): it differs from max softmax in training only, from MC dropout in inference "
        "only. Max softmax and temperature scaling score the first ensemble's members, so each arm is "
        "compared with the one it differs from in one thing, paired (see the planned comparisons).",
        "",
    ]
    lines += _method_table(U)
    temps = U.get("temperatures") or []
    lines += [
        "",
        "Fitted temperatures (per seed, on the held-out fifth): "
        + ", ".join(f"{t:.3g}" for t in temps)
        + (
            ". A temperature at the search's lower bound (0.05) means the held-out rows were all classified "
            "right, so sharper is always better there: temperature scaling then over-sharpens."
            if temps and min(temps) < 0.051
            else "."
        ),
        "",
        "AUROC and FPR use −log(1 − max softmax) computed from the other classes' mass (the same ranking as "
        "max softmax, without ties where the top probability rounds to 1).",
        "",
    ]
    lines += _shift_table(U)
    lines += [
        "",
        f"Does max softmax flag attacked inputs (AUROC, clean vs attacked; 10-class models)? PGD at ε = "
        f"{c['flag_eps']} on the standard model: {_ci(U['flags']['pgd'], 3)}; the trigger on the model "
        f"trained with {c['flag_count']} triggered rows: {_ci(U['flags']['trigger'], 3)} (0.5 = no signal; "
        "below 0.5 = the attack makes the model *more* confident).",
        "",
    ]
    return lines


def _method_table(U: dict) -> list[str]:
    """Per method: in-distribution accuracy, NLL and ECE; AUROC and FPR at 95% TPR against each OOD set."""
    lines = [
        "| method | accuracy | NLL | ECE | AUROC: "
        + " | AUROC: ".join(U["ood"])
        + " | FPR@95%TPR: "
        + " | FPR@95%TPR: ".join(U["ood"])
        + " |",
        "|---|---|---|---|" + "---|" * (2 * len(U["ood"])),
    ]
    for m, x in U["in_distribution"].items():
        lines.append(
            f"| {m} | {_ci(x['accuracy'], 3)} | {_ci(x['nll'], 3)} | {_ci(x['ece'], 3)} | "
            + " | ".join(_ci(U["ood"][s][m]["auroc"], 3) for s in U["ood"])
            + " | "
            + " | ".join(_ci(U["ood"][s][m]["fpr95"], 3) for s in U["ood"])
            + " |"
        )
    return lines


def _shift_table(U: dict) -> list[str]:
    """The rotation sweep: per angle and method, accuracy / ECE / AUROC against the unrotated images."""
    lines = [
        "Rotation (shift sweep): accuracy / ECE / AUROC against the unrotated test images.",
        "",
        "| angle | " + " | ".join(U["in_distribution"]) + " |",
        "|---|" + "---|" * len(U["in_distribution"]),
    ]
    for ang, x in U["shift"].items():
        lines.append(
            f"| {ang}° | "
            + " | ".join(
                f"{x[m]['accuracy']['mean']:.2f} / {x[m]['ece']['mean']:.3f} / {x[m]['auroc']['mean']:.2f}"
                for m in U["in_distribution"]
            )
            + " |"
        )
    return lines


def _comparisons_section(r: dict) -> list[str]:
    """The planned comparisons, one table per declared Holm family, each with its unit and test."""
    lines = [
        "## Planned comparisons",
        "",
        "Two-sided tests, in two Holm families declared from the config before the run (`families` in the "
        "JSON; the report tests exactly those): one per unit, never one family mixing them.",
        "",
    ]
    for fam, ids in (r.get("families") or {}).items():
        lines += _family_intro(r["config"], fam, len(ids))
        lines += ["| contrast | result | reading |", "|---|---|---|"]
        lines += [_comparison_row(x, len(ids)) for x in r["comparisons"] if x["family"] == fam]
        lines.append("")
    lines.pop()
    return lines


def _family_intro(c: dict, fam: str, m: int) -> list[str]:
    """The heading and method note of one Holm family of ``m`` tests."""
    if fam == TRAINING:
        return [
            f"### Claims about training: unit training seeds (n = {c['seeds']}), {m} tests, Holm across them",
            "",
            "Paired t over the seeds (the models of a contrast share their seeds' initialization, or are "
            "paired by index where they cannot), the interval clipped to a difference's range [−1, 1]. Where "
            "every seed's difference is the same a t test is undefined: the exact sign test over the seeds "
            f"(with {c['seeds']} seeds its smallest two-sided p is {2 * 0.5 ** c['seeds']:.4g}, so such a "
            "contrast cannot pass Holm here), with the widest of the seeds' Newcombe intervals. A null's "
            f"smallest detectable effect (80% power) is at the level the verdict uses: α = 0.05/{m}, t "
            "quantiles.",
            "",
        ]
    return [
        f"### Claims about the trained models: unit test images, each model on its own, {m} tests, Holm "
        "across them",
        "",
        f"Each of the {c['seeds']} poisoned models against its unpoisoned twin (same initialization) on the "
        "same triggered test images: McNemar's exact test per model, never pooling an image across models. "
        "The p is the largest of the models' (an intersection–union test: significant means every one of "
        "these models), the difference and Newcombe's paired interval are that model's. This says what the "
        "trained models do, not how a new training run would go.",
        "",
    ]


def _comparison_row(x: dict, m: int) -> str:
    """One contrast's table row: its result and its reading (a null's detectable effect and spread note)."""
    from heredity.reports.stats import fmt_test, spread_note, verdict

    v = verdict(x["test"], 0, p=x["p_holm"])
    mde = (
        f"; could have seen ±{x['mde']:.3f} (α = 0.05/{m})" if v["result"] == "null" and x.get("mde") else ""
    )
    note = spread_note(x["test"]["n"]) if v["result"] == "null" and isinstance(x["test"]["n"], int) else ""
    return (
        f"| {x['what']} | {fmt_test(x['test'], 3, p=x['p_holm'])} | {v['words']}{mde}"
        + (f" ({note})" if note else "")
        + " |"
    )


def _anchors_section(r: dict) -> list[str]:
    """Our numbers beside the published figures (``ANCHORS``), one row each."""
    c, P, A, U = r["config"], r["poisoning"], r["adversarial"], r["uncertainty"]
    need = {w: needed_count(r, w) for w in c["widths"]}
    full = next(
        (b for b in P["badnets"] if b["width"] == c["hidden"] and b["count"] == max(c["counts"])), None
    )
    clean0 = next((b for b in P["badnets"] if b["width"] == c["hidden"] and b["count"] == 0), None)
    at_03 = c["eps"][-1] == 0.3
    ours = [
        f"{max(c['counts'])} rows at w{c['hidden']}: success {_ci(full['attack_success'])}, clean accuracy "
        f"{_ci(full['clean_accuracy'])} vs {_ci(clean0['clean_accuracy'])} unpoisoned"
        if full and clean0
        else "—",
        f"count for ≥ 90% mean success on the grid {c['counts']} (descriptive): "
        + ", ".join(f"w{w}: {v if v is not None else 'none'}" for w, v in need.items()),
        f"standard MLP under FGSM at ε = 0.3: accuracy {_ci(A['robust']['standard/fgsm'][-1])}"
        if at_03
        else "—",
        f"PGD-trained under PGD at ε = 0.3: {_ci(A['robust']['pgd-trained/pgd'][-1])} (trained at ε = "
        f"{c['train_eps']})"
        if at_03
        else "—",
        f"held-out digits AUROC: max softmax {_ci(U['ood']['other digits']['max softmax']['auroc'])}, "
        f"ensemble {_ci(U['ood']['other digits']['ensemble']['auroc'])}"
        if "other digits" in U["ood"]
        else "—",
    ]
    lines = [
        "",
        "## Beside the published figures",
        "",
        "| published | their figure | ours |",
        "|---|---|---|",
    ]
    for (what, fig), o in zip(ANCHORS, ours, strict=True):
        lines.append(f"| {what} | {fig} | {o} |")
    return lines


# ---- the plot -----------------------------------------------------------------------------------


def plot(r: dict, path) -> None:
    """Attack success vs count per width; accuracy vs ε per training; the transfer matrix; reliability; OOD
    ROC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 5, figsize=(22, 4))
    _plot_trigger(ax[0], r)
    _plot_robust(ax[1], r)
    _plot_transfer(fig, ax[2], r)
    _plot_reliability(ax[3], r)
    _plot_roc(ax[4], r)
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_trigger(ax, r: dict) -> None:
    """Attack success against the trigger count, one line per width."""
    from heredity.reports.card import yerr

    for w in r["config"]["widths"]:
        bs = [b for b in r["poisoning"]["badnets"] if b["width"] == w]
        xs = [max(b["count"], 1) for b in bs]
        ax.errorbar(
            xs,
            [b["attack_success"]["mean"] for b in bs],
            yerr=yerr([b["attack_success"] for b in bs]),
            marker="o",
            capsize=3,
            label=f"width {w}",
        )
    ax.set(
        xscale="log",
        xlabel="triggered training rows (0 plotted at 1)",
        ylabel="attack success",
        ylim=(0, 1.02),
        title="poisoning: count × width",
    )


def _plot_robust(ax, r: dict) -> None:
    """Accuracy under attack against ε, one line per training kind and attack."""
    from heredity.reports.card import yerr

    eps = r["config"]["eps"]
    for k, per in r["adversarial"]["robust"].items():
        ax.errorbar(eps, [x["mean"] for x in per], yerr=yerr(per), marker="o", capsize=3, label=k)
    ax.set(
        xlabel="ε (pixel units)", ylabel="accuracy under attack", ylim=(0, 1.02), title="adversarial examples"
    )


def _plot_transfer(fig, ax, r: dict) -> None:
    """The sibling transfer matrix (error rate) at ``flag_eps`` (else the first ε with a transfer)."""
    c, transfer = r["config"], r["adversarial"]["transfer"]
    e = str(c["flag_eps"]) if str(c["flag_eps"]) in transfer else next(iter(transfer))
    m = transfer[e]
    names = list(m)
    mat = np.array([[m[s][d]["mean"] for d in names] for s in names])
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", color="w" if mat[i, j] < 0.6 else "k")
    ax.set(
        xticks=range(len(names)),
        xticklabels=names,
        yticks=range(len(names)),
        yticklabels=names,
        xlabel="tested on",
        ylabel="crafted on",
        title=f"PGD transfer, error (ε = {e})",
    )
    fig.colorbar(im, ax=ax, fraction=0.046)


def _plot_reliability(ax, r: dict) -> None:
    """Reliability diagrams of the first replicate, under shift when the report has one."""
    shift = r["uncertainty"].get("reliability_shift") or {}
    rels = {k: v for k, v in shift.items() if k != "angle"} or r["uncertainty"]["reliability"]
    for name, rel in rels.items():
        conf, acc = np.array(rel["confidence"], float), np.array(rel["accuracy"], float)
        ok = np.isfinite(conf) & np.isfinite(acc)
        ax.plot(conf[ok], acc[ok], marker="o", label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    where = f"digits rotated {shift['angle']}°" if shift else "in distribution"
    ax.set(xlabel="confidence", ylabel="accuracy", title=f"reliability ({where}, replicate 1)")


def _plot_roc(ax, r: dict) -> None:
    """The ROC curve the report kept (the first ensemble against the held-out digits), if any."""
    roc = r["uncertainty"].get("roc")
    if roc:
        ax.plot(roc["fpr"], roc["tpr"], label=roc["method"])
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(
            xlabel="false positive rate (OOD accepted)",
            ylabel="true positive rate",
            title=f"ROC vs {roc['ood']}",
        )
