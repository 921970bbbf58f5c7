"""The docs site's generated parts: a committed report's card and each experiment page's results section are
rendered from the report JSON by the experiment's own ``markdown``, so no figure on the site can drift from
its report (``python -m heredity.docsite --check`` fails when a generated part is stale; ``make test`` runs
it).

What is generated, and from what:

* ``docs/results/NAME.md`` (a report's card) = the paragraphs saying how the report was made (its command and
  wall time, the one part written by hand, kept from the card) + the experiment's ``markdown(report)`` + its
  plot;
* the part of ``docs/experiments/EXPERIMENT.md`` between ``<!-- results:begin -->`` and
  ``<!-- results:end -->`` = for each committed report of that experiment: its name linking the card, how it
  was made, its outcome line and its plot;
* the README's table of experiments (between ``<!-- experiments:begin -->`` and ``<!-- experiments:end -->``)
  and the Experiments section of ``mkdocs.yml``'s nav = one row / entry per registered experiment that has a
  page ``docs/experiments/NAME.md``, its question from its ``@experiment`` (a row's time and headline
  cells are kept as written; a new experiment's row says where its results are), so adding an experiment
  needs no edit in either;
* ``docs/index.md`` = the README, its links made relative to ``docs/``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
from pathlib import Path

from heredity.errors import HeredityError

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
TABLE_BEGIN, TABLE_END = "<!-- experiments:begin -->", "<!-- experiments:end -->"
NAV_BEGIN, NAV_END = "      # experiments:begin", "      # experiments:end"
FLAGSHIP = "subliminal-weights"
PROVENANCE = ("_Command", "Command:", "**Re-rendered")


def provenance(card: str, rerender_notes: bool = True) -> str:
    """The paragraphs of a card that say how its report was made (command, machine, wall time, re-renderings):
    the one hand-written part of a card, kept wherever an older card put it. ``rerender_notes=False`` drops
    the note ``heredity rerender`` writes (it writes a fresh one)."""
    keep = []
    for p in (x.strip() for x in card.split("\n\n")):
        if p.startswith(PROVENANCE) or (
            p.startswith("_Re-rendered") and (rerender_notes or "heredity rerender" not in p)
        ):
            keep.append(p)
    return "\n\n".join(keep)


@functools.lru_cache(maxsize=256)
def _loaded(path: str, mtime_ns: int) -> tuple[dict, str, str]:
    p = Path(path)
    report = json.loads(p.read_text())
    name, mod = renderer(report, p.stem)
    return report, name, mod.markdown(report)


def loaded(p: Path) -> tuple[dict, str, str]:
    """A committed report JSON, the experiment that renders it, and its rendering (cached while the file is
    unchanged)."""
    return _loaded(str(p), p.stat().st_mtime_ns)


def renderer(report: dict, stem: str):
    """The module that renders a committed report: its ``experiment`` field, else the longest experiment name
    its file's stem starts with (``insights-*`` is the insights pipeline's)."""
    from heredity.experiments import REGISTRY, get

    name = report.get("experiment")
    if name is None:
        if stem.startswith("insights"):
            return "insights", importlib.import_module("heredity.insights.pipeline")
        name = next((n for n in sorted(REGISTRY, key=len, reverse=True) if stem.startswith(n)), None)
    if name is None:
        raise HeredityError(f'docs/results/{stem}.json names no experiment; add an "experiment" field to it')
    return name, get(name)


def card(json_path: Path, head: str | None = None) -> str:
    """A report's card: how it was made (``head``, by default kept from the committed card), then the
    experiment's rendering, then the plot."""
    _, _, body = loaded(json_path)
    md = json_path.with_suffix(".md")
    if head is None:
        head = provenance(md.read_text()) if md.is_file() else ""
    body = body.rstrip()
    plot = f"\n\n![plot]({json_path.stem}.png)" if json_path.with_suffix(".png").is_file() else ""
    return (f"{head}\n\n" if head else "") + body + plot + "\n"


def outcome(report: dict, rendered: str) -> str:
    """A report's outcome line: its ``outcome`` field, else the card's first paragraph that starts with
    "**Outcome" or "Outcome", else nothing."""
    if isinstance(report.get("outcome"), str):
        return report["outcome"]
    for p in rendered.split("\n\n"):
        if p.lstrip("*_ ").lower().startswith("outcome"):
            return p.strip()
    return ""


def page_of(experiment: str) -> Path:
    """The docs page that shows an experiment's reports: its own page, else the page of the experiment it
    extends (``subliminal-digits-sweep`` → ``subliminal-digits``); the insights pipeline's is its guide."""
    if experiment == "insights":
        return DOCS / "guides" / "insights.md"
    pages = DOCS / "experiments"
    own = pages / f"{experiment}.md"
    if own.is_file():
        return own
    parents = [p for p in pages.glob("*.md") if experiment.startswith(p.stem + "-")]
    return max(parents, key=lambda p: len(p.stem)) if parents else own


def reports_on(page: Path) -> list[Path]:
    """The committed report JSONs a page shows."""
    return [p for p in sorted(RESULTS.glob("*.json")) if page_of(loaded(p)[1]) == page]


def results_section(page: Path) -> str:
    """The generated results section of an experiment's page."""
    parts = [
        BEGIN,
        "",
        "## Results",
        "",
        "_Generated by `python -m heredity.docsite` from the committed report JSON; the full card of each "
        "report is linked._",
        "",
    ]
    paths = reports_on(page)
    if not paths:
        parts += ["No report of this experiment is committed yet.", ""]
    for p in paths:
        report, _, body = loaded(p)
        parts += [f"### [{p.stem}](../results/{p.stem}.md)", ""]
        head = provenance(p.with_suffix(".md").read_text()) if p.with_suffix(".md").is_file() else ""
        if head:
            parts += [head, ""]
        line = outcome(report, body)
        if line:
            parts += [line if line.startswith("**") else f"**Outcome.** {line}", ""]
        if p.with_suffix(".png").is_file():
            parts += [f"![{p.stem}](../results/{p.stem}.png)", ""]
    parts.append(END)
    return "\n".join(parts)


def page_with_results(page: Path) -> str:
    """An experiment page with its results section regenerated (appended when the page has none yet)."""
    text = page.read_text()
    section = results_section(page)
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        return before + section + rest.split(END, 1)[1]
    return text.rstrip() + "\n\n" + section + "\n"


def _between(text: str, begin: str, end: str, where: str) -> tuple[str, str, str]:
    if begin not in text or end not in text:
        raise HeredityError(
            f"{where} has no {begin} … {end} block; put the markers back around its generated part"
        )
    before, rest = text.split(begin, 1)
    middle, after = rest.split(end, 1)
    return before, middle, after


def _table_cells(block: str) -> dict[str, list[str]]:
    """The README table's rows as they stand: experiment name → its cells."""
    rows = {}
    for line in block.splitlines():
        if line.startswith("| [") and "](docs/experiments/" in line:
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows[cells[0].split("]", 1)[0][1:]] = cells
    return rows


def experiments_shown() -> list[tuple[str, str]]:
    """(name, question) of every registered experiment with its own page: the flagship first, then the order
    of the README's table, then any experiment not in it yet (registry order)."""
    from heredity.experiments import questions

    asked = {n: q for n, q in questions().items() if (DOCS / "experiments" / f"{n}.md").is_file()}
    text = (ROOT / "README.md").read_text()
    listed = (
        list(_table_cells(_between(text, TABLE_BEGIN, TABLE_END, "README.md")[1]))
        if TABLE_BEGIN in text
        else []
    )
    order = [FLAGSHIP] + [n for n in listed if n != FLAGSHIP] + [n for n in asked if n not in listed]
    return [(n, asked[n]) for n in dict.fromkeys(order) if n in asked]


def readme() -> str:
    """The README with its table of experiments regenerated."""
    text = (ROOT / "README.md").read_text()
    before, block, after = _between(text, TABLE_BEGIN, TABLE_END, "README.md")
    kept = _table_cells(block)
    rows = [
        "| experiment | the question | quick | headline (quick preset unless named) |",
        "|---|---|---|---|",
    ]
    for name, question in experiments_shown():
        page = f"docs/experiments/{name}.md"
        cells = kept.get(name) or ["", "", "—", f"no report yet: see [its page]({page})"]
        rows.append(f"| [{name}]({page}) | {question.replace('|', '/')} | {cells[2]} | {cells[3]} |")
    return before + TABLE_BEGIN + "\n" + "\n".join(rows) + "\n" + TABLE_END + after


def mkdocs_nav() -> str:
    """``mkdocs.yml`` with the Experiments section of its nav regenerated."""
    text = (ROOT / "mkdocs.yml").read_text()
    before, _, after = _between(text, NAV_BEGIN, NAV_END, "mkdocs.yml")
    lines = [
        f"      - {name}{' (flagship)' if name == FLAGSHIP else ''}: experiments/{name}.md"
        for name, _ in experiments_shown()
    ]
    return before + NAV_BEGIN + "\n" + "\n".join(lines) + "\n" + NAV_END + after


def home(text: str | None = None) -> str:
    """The site's home page: the README (``text``, else its table regenerated here), its links made relative
    to ``docs/``."""
    text = readme() if text is None else text
    text = text.replace("](docs/results/)", "](results/index.md)").replace("](docs/", "](")
    return "<!-- generated from README.md by `python -m heredity.docsite`: edit the README -->\n" + text


def results_index() -> str:
    """``docs/results/index.md``: every committed report, its experiment and its outcome line."""
    lines = [
        "# Committed reports",
        "",
        "_Generated by `python -m heredity.docsite` from the report JSON._",
        "",
        "| report | experiment | outcome |",
        "|---|---|---|",
    ]
    for p in sorted(RESULTS.glob("*.json")):
        report, name, body = loaded(p)
        line = outcome(report, body).replace("|", "\\|").replace("\n", " ")
        line = line if len(line) <= 300 else line[:297].rsplit(" ", 1)[0] + " …"
        page = (
            f"[{name}](../experiments/{name}.md)" if (DOCS / "experiments" / f"{name}.md").is_file() else name
        )
        lines.append(f"| [{p.stem}]({p.stem}.md) | {page} | {line} |")
    return "\n".join(lines) + "\n"


def generated() -> dict[Path, str]:
    """Every generated file and what it should hold."""
    out = {p.with_suffix(".md"): card(p) for p in sorted(RESULTS.glob("*.json"))}
    out[ROOT / "README.md"] = text = readme()
    out[ROOT / "mkdocs.yml"] = mkdocs_nav()
    out[DOCS / "index.md"] = home(text)
    out[RESULTS / "index.md"] = results_index()
    for page in results_pages():
        out[page] = page_with_results(page)
    return out


def results_pages() -> list[Path]:
    """Every page with a generated results section: each experiment's, and each page that shows a report."""
    from heredity.experiments import REGISTRY

    pages = {p for p in (DOCS / "experiments").glob("*.md") if p.stem in REGISTRY}
    pages |= {page_of(loaded(p)[1]) for p in RESULTS.glob("*.json")}
    return sorted(pages)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m heredity.docsite", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated part is stale; write nothing")
    args = ap.parse_args(argv)
    stale = [p for p, text in generated().items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(
                f"stale: {p.relative_to(ROOT)} (run `python -m heredity.docsite` and commit)", file=sys.stderr
            )
        return 1 if stale else 0
    for p in stale:
        p.write_text(_text_for(p))
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


def _text_for(path: Path) -> str:
    if path == ROOT / "README.md":
        return readme()
    if path == ROOT / "mkdocs.yml":
        return mkdocs_nav()
    if path == DOCS / "index.md":
        return home()
    if path == RESULTS / "index.md":
        return results_index()
    if path.parent == RESULTS:
        return card(path.with_suffix(".json"))
    if path in results_pages():
        return page_with_results(path)
    raise KeyError(path)


if __name__ == "__main__":
    sys.exit(main())
