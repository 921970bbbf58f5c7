"""An experiment's report card as one store step: report.json, report.md and plot.png in a report artifact."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from heredity.store.ops import op
from heredity.store.store import finite_json


@op("report-*", 2, note="v2: the renderers' code digest is keyed")
def save_card(
    store,
    name: str,
    report: dict,
    inputs: Sequence[str],
    markdown: Callable[[dict], str],
    plot: Callable[[dict, object], None],
) -> dict:
    """Write the card as step ``report-NAME`` (keyed on the report itself, with lineage to ``inputs``);
    returns {report: id, markdown, outcome, files}. The report is taken as strict JSON (NaN → None, as
    report.json stores it), so renderers see what a reader of report.json sees."""
    report = finite_json(report)

    def write(ctx):
        out = ctx.output("report", "report", name, meta={"outcome": report["outcome"]})
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(markdown(report))
        plot(report, out / "plot.png")

    from heredity.store.ops import code_digest

    # the card's files are the report rendered by ``markdown`` and ``plot``: their code is part of the key, so
    # an edited renderer re-renders instead of returning a stale card
    key = {"report": report, "render": code_digest(markdown, plot)}
    rid = store.run_step(f"report-{name}", key, list(dict.fromkeys(inputs)), write)["report"]
    return {
        "report": rid,
        "markdown": markdown(report),
        "outcome": report["outcome"],
        "files": [str(store.path(rid) / f) for f in ("report.md", "report.json", "plot.png")],
    }


def yerr(cis: Sequence[dict]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars from intervals {mean, lo, hi} (never negative; a bound that is None
    or NaN, as with one seed, gives no bar on that side)."""

    def gap(a: float | None, b: float | None) -> float:
        if a is None or b is None:
            return 0.0
        d = a - b
        return 0.0 if d != d or d < 0 else d  # d != d: NaN

    return [[gap(c["mean"], c["lo"]) for c in cis], [gap(c["hi"], c["mean"]) for c in cis]]
