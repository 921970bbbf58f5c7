"""subliminal-digits, mapped: the same-init − other-init gap along the axes where the literature predicts a gradient.

Each point is one ``subliminal-digits`` run (its own memoized step, every seed trains one teacher and its two
aux students) with one setting changed from the base config: the number of auxiliary logits m, the hidden
width, and the students' distillation steps. Per point: the paired gap same-init − other-init over training
seeds (the unit of replication), its t interval and a two-sided p, Holm-adjusted over every point of the sweep.
The plot shows the gap against each axis with its intervals; the report says, per axis, where the gap is
significant and how it moves.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from heredity.experiments import experiment
from heredity.experiments import subliminal_digits as digits
from heredity.store import Store

AXES = {"aux": [1, 3, 10, 30], "hidden": [64, 128, 256, 512], "student_steps": [100, 200, 400, 800]}
LABELS = {"aux": "auxiliary logits m", "hidden": "hidden width", "student_steps": "distillation steps"}


class Config(BaseModel):
    base: digits.Config = Field(default_factory=digits.Config, description="the run every point starts from")
    axes: dict[str, list[int]] = Field(default_factory=lambda: {k: list(v) for k, v in AXES.items()})

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),  # scikit-learn digits, 25 seeds per point: 12 points of ~20 s on 2 cores
            "paper": cls(base=digits.Config.presets()["paper"]),
        }


@experiment(
    "subliminal-digits-sweep", question="Where does the digits gap come from: auxiliary logits, width, dose?"
)
def run(store: Store, config: Config, progress: bool = True) -> dict:
    from heredity.reports.card import save_card
    from heredity.reports.stats import fmt_test, holm, min_detectable, verdict

    bad = sorted(set(config.axes) - set(AXES))
    if bad:
        from heredity.errors import HeredityError

        raise HeredityError(f"unknown sweep axis {bad[0]!r}; axes are {', '.join(AXES)}")
    points, inputs = [], []
    for axis, values in config.axes.items():
        for v in values:
            res = digits.run(store, config.base.model_copy(update={axis: v}), progress=progress)
            rep = json.loads((store.path(res["report"]) / "report.json").read_text())
            t = rep["same_vs_other"]
            points.append(
                {
                    "axis": axis,
                    "value": v,
                    "test": t,
                    "same": rep["arms"]["student same-init aux"],
                    "other": rep["arms"]["student other-init aux"],
                    "report": res["report"],
                    "seconds": rep["seconds"],
                }
            )
            inputs.append(res["report"])
    runs = list(
        dict.fromkeys(pt["report"] for pt in points)
    )  # the base setting sits on every axis: one run, counted once
    first = {pt["report"]: pt for pt in reversed(points)}
    adjusted = dict(zip(runs, holm([first[r]["test"]["p"] for r in runs]), strict=True))
    for pt in points:
        pt["p_holm"] = adjusted[pt["report"]]
        pt["verdict"] = verdict(pt["test"], expected=+1, p=pt["p_holm"])["result"]
        pt["min_detectable"] = min_detectable(
            pt["test"]["sd"], pt["test"]["n"], family=len(runs)
        )  # at the Holm level
    by_axis = {}
    for axis in config.axes:
        pts = [p for p in points if p["axis"] == axis]
        sig = [p["value"] for p in pts if p["verdict"] == "as hypothesised"]
        gaps = [round(p["test"]["diff"], 3) for p in pts]
        by_axis[axis] = {"values": [p["value"] for p in pts], "gaps": gaps, "significant_at": sig}
    outcome = (
        "; ".join(
            f"{LABELS[a]} {b['values']}: gap {b['gaps']} (significant, Holm over {len(runs)} distinct runs, at {b['significant_at'] or 'none'})"
            for a, b in by_axis.items()
        )
        + f" — gap = same-init − other-init test accuracy; unit: training seeds, n = {config.base.seeds} per point"
    )
    report = {
        "experiment": "subliminal-digits-sweep",
        "config": config.model_dump(),
        "points": points,
        "runs": len(runs),
        "by_axis": by_axis,
        "outcome": outcome,
        "examples": fmt_test(points[0]["test"]) if points else "",
    }
    card = save_card(store, "subliminal-digits-sweep", report, inputs, markdown, plot)
    return {
        "report": card["report"],
        "outcome": outcome,
        "markdown": card["markdown"],
        "files": card["files"],
        "lineage_of": card["report"],
    }


def rerender(r: dict) -> dict:
    """A committed sweep with each null's smallest detectable gap at the Holm level over its distinct runs, and
    the verdicts from ``stats.verdict`` (nothing retrained)."""
    from heredity.reports.stats import min_detectable, verdict

    r = json.loads(json.dumps(r))
    for pt in r["points"]:
        pt["verdict"] = verdict(pt["test"], expected=+1, p=pt["p_holm"])["result"]
        pt["min_detectable"] = min_detectable(pt["test"]["sd"], pt["test"]["n"], family=r["runs"])
    return r


def markdown(r: dict) -> str:
    from heredity.reports.stats import fmt_ci, fmt_p

    base = r["config"]["base"]
    lines = [
        "# subliminal-digits-sweep",
        "",
        f"Each row is one `subliminal-digits` run ({base['data']}, {base['seeds']} training seeds) with one setting "
        f"changed from the base (m = {base['aux']}, width {base['hidden']}, {base['student_steps']} distillation "
        "steps). Gap: same-init minus other-init aux-student test accuracy, paired by seed (each seed trains one "
        f"teacher and both students); 95% t interval over seeds; two-sided p, Holm-adjusted over the "
        f"{r['runs']} distinct runs (the base setting appears on every axis); for a null, the smallest gap the "
        "seeds could have detected (80% power at the Holm level, α = 0.05 / the distinct runs). Unit of replication: "
        "training seeds.",
        "",
        f"| axis | value | same-init | other-init | gap [95% CI] | p (Holm; unit: training seeds, n = {base['seeds']}) "
        "| verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in r["points"]:
        t = p["test"]
        lines.append(
            f"| {LABELS[p['axis']]} | {p['value']} | {fmt_ci(p['same'])} | {fmt_ci(p['other'])} | "
            f"{fmt_ci({'mean': t['diff'], 'lo': t['lo'], 'hi': t['hi']})} | {fmt_p(p['p_holm'])} | {p['verdict']}"
            + (f" (could have seen {p['min_detectable']:.3f})" if p["verdict"] == "null" else "")
            + " |"
        )
    lines += ["", f"**Outcome.** {r['outcome']}.", ""]
    return "\n".join(lines)


def plot(r: dict, path) -> None:
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
