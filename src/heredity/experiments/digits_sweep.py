"""subliminal-digits, mapped: the same-init − other-init gap along the axes where the literature predicts a
gradient.

Each point is one ``subliminal-digits`` run (its own memoized step, every seed trains one teacher and its two
aux students) with one setting changed from the base config: the number of auxiliary logits m, the hidden
width, and the students' distillation steps. Per point: the paired gap same-init − other-init over training
seeds (the unit of replication), its t interval and a two-sided p, Holm-adjusted over every point of the
sweep. The plot shows the gap against each axis with its intervals; the report says, per axis, where the gap
is significant and how it moves. The card (markdown and plot) is rendered by ``digits_sweep_render``.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from heredity.experiments import experiment
from heredity.experiments import subliminal_digits as digits
from heredity.experiments.digits_sweep_render import LABELS, markdown, plot
from heredity.store import Store

AXES = {"aux": [1, 3, 10, 30], "hidden": [64, 128, 256, 512], "student_steps": [100, 200, 400, 800]}


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
    from heredity.reports.stats import fmt_test

    bad = sorted(set(config.axes) - set(AXES))
    if bad:
        from heredity.errors import HeredityError

        raise HeredityError(f"unknown sweep axis {bad[0]!r}; axes are {', '.join(AXES)}")
    points = sweep_points(store, config, progress)
    inputs = [pt["report"] for pt in points]
    runs = list(
        dict.fromkeys(pt["report"] for pt in points)
    )  # the base setting sits on every axis: one run, counted once
    holm_over_runs(points, runs)
    by_axis = axis_summary(points, config)
    outcome = (
        "; ".join(
            f"{LABELS[a]} {b['values']}: gap {b['gaps']} (significant, Holm over {len(runs)} distinct runs, "
            f"at {b['significant_at'] or 'none'})"
            for a, b in by_axis.items()
        )
        + " — gap = same-init − other-init test accuracy; unit: training seeds, n = "
        f"{config.base.seeds} per point"
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


def sweep_points(store: Store, config: Config, progress: bool) -> list[dict]:
    """One ``subliminal-digits`` run per axis and value (the base config with that one setting changed): its
    paired same − other test and both arms."""
    points = []
    for axis, values in config.axes.items():
        for v in values:
            res = digits.run(store, config.base.model_copy(update={axis: v}), progress=progress)
            rep = json.loads((store.path(res["report"]) / "report.json").read_text())
            points.append(
                {
                    "axis": axis,
                    "value": v,
                    "test": rep["same_vs_other"],
                    "same": rep["arms"]["student same-init aux"],
                    "other": rep["arms"]["student other-init aux"],
                    "report": res["report"],
                    "seconds": rep["seconds"],
                }
            )
    return points


def holm_over_runs(points: list[dict], runs: list[str]) -> None:
    """Each point's p Holm-adjusted over the distinct runs, its verdict, and its smallest detectable gap at
    the Holm level (set on the points)."""
    from heredity.reports.stats import holm, min_detectable, verdict

    first = {pt["report"]: pt for pt in reversed(points)}
    adjusted = dict(zip(runs, holm([first[r]["test"]["p"] for r in runs]), strict=True))
    for pt in points:
        pt["p_holm"] = adjusted[pt["report"]]
        pt["verdict"] = verdict(pt["test"], expected=+1, p=pt["p_holm"])["result"]
        pt["min_detectable"] = min_detectable(
            pt["test"]["sd"], pt["test"]["n"], family=len(runs)
        )  # at the Holm level


def axis_summary(points: list[dict], config: Config) -> dict[str, dict]:
    """Per axis: its values, the gap at each, and the values where the gap is significant as hypothesised."""
    by_axis = {}
    for axis in config.axes:
        pts = [p for p in points if p["axis"] == axis]
        sig = [p["value"] for p in pts if p["verdict"] == "as hypothesised"]
        gaps = [round(p["test"]["diff"], 3) for p in pts]
        by_axis[axis] = {"values": [p["value"] for p in pts], "gaps": gaps, "significant_at": sig}
    return by_axis


def rerender(r: dict) -> dict:
    """A committed sweep with each null's smallest detectable gap at the Holm level over its distinct runs,
    and the verdicts from ``stats.verdict`` (nothing retrained)."""
    from heredity.reports.stats import min_detectable, verdict

    r = json.loads(json.dumps(r))
    for pt in r["points"]:
        pt["verdict"] = verdict(pt["test"], expected=+1, p=pt["p_holm"])["result"]
        pt["min_detectable"] = min_detectable(pt["test"]["sd"], pt["test"]["n"], family=r["runs"])
    return r
