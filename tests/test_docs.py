"""The README and the docs site: the README stays a short story whose commands run, the site builds in strict
mode (a broken link or anchor fails), its generated parts are not stale, every committed report is reachable
from its experiment's page, and every interval a page quotes is in a report that page links."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_committed_reports import readme_intervals_not_in_reports

from heredity import docsite

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_the_readme_is_a_story_of_at_most_250_lines():
    assert len(README.read_text().splitlines()) <= 250


def test_the_generated_parts_of_the_site_are_not_stale():
    """Cards, experiment pages' results sections, the home page and the report index equal what
    ``python -m heredity.docsite`` renders from the committed JSON today."""
    stale = [str(p.relative_to(ROOT)) for p, text in docsite.generated().items() if p.read_text() != text]
    assert not stale, f"run `python -m heredity.docsite` and commit: {stale}"


def test_the_staleness_check_can_fail(tmp_path, monkeypatch):
    """A figure edited by hand in a card, a results section or the README's generated table is caught:
    ``--check`` exits 1 (and the regeneration restores it)."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    results = tmp_path / "docs" / "results"
    (tmp_path / "README.md").write_text(README.read_text())
    (tmp_path / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text())
    monkeypatch.setattr(docsite, "ROOT", tmp_path)
    monkeypatch.setattr(docsite, "DOCS", tmp_path / "docs")
    monkeypatch.setattr(docsite, "RESULTS", results)
    for p, text in docsite.generated().items():  # the copy starts fresh
        p.write_text(text)
    assert docsite.main(["--check"]) == 0
    card = results / "subliminal-digits-quick.md"
    card.write_text(card.read_text().replace("0.468", "0.486", 1))
    assert docsite.main(["--check"]) == 1
    assert docsite.main([]) == 0 and "0.468" in card.read_text() and docsite.main(["--check"]) == 0
    page = tmp_path / "docs" / "experiments" / "subliminal-digits.md"
    page.write_text(page.read_text().replace(docsite.END, "a line written by hand\n" + docsite.END))
    assert docsite.main(["--check"]) == 1
    assert docsite.main([]) == 0
    readme = tmp_path / "README.md"
    question = "The paper's MNIST result: do auxiliary logits on noise teach a same-init classifier?"
    assert question in readme.read_text()
    readme.write_text(readme.read_text().replace(question, "a question edited by hand"))
    assert docsite.main(["--check"]) == 1
    assert docsite.main([]) == 0 and question in readme.read_text()


def test_every_committed_report_is_reachable_from_its_experiment_page():
    for p in sorted(docsite.RESULTS.glob("*.json")):
        page = docsite.page_of(docsite.renderer(json.loads(p.read_text()), p.stem)[0])
        assert page.is_file(), f"{p.name}: no page {page.relative_to(ROOT)}"
        assert f"results/{p.stem}.md" in page.read_text(), f"{page.name} does not link {p.stem}"


def test_every_interval_an_experiment_page_quotes_is_in_a_report_it_links():
    pages = sorted((docsite.DOCS / "experiments").glob("*.md"))
    bad = []
    for page in pages:
        text = page.read_text().split(docsite.BEGIN)[0]  # the generated section is checked by staleness
        bad += [
            f"{page.name}: {b}" for b in readme_intervals_not_in_reports(text, docsite.RESULTS, linked=LINKED)
        ]
    assert not bad, f"figures no linked report holds (fix the text or link the report): {bad[:5]}"


LINKED = re.compile(r"results/([\w.-]+)\.(?:md|json|png)")


@pytest.mark.skipif(
    shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None and not os.environ.get("CI"),
    reason="mkdocs is installed by `make install` (dev extra)",
)
def test_the_site_builds_in_strict_mode(tmp_path):
    """``mkdocs build --strict``: a broken link, a missing anchor or a page outside the nav that is not a card
    fails the build."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    r = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "experiments" / "subliminal-weights" / "index.html").is_file()


def test_the_readmes_quick_commands_run_as_written(tmp_path):
    """The README's commands that finish in seconds run as written, on a fresh store."""
    env = {**os.environ, "HEREDITY_HOME": str(tmp_path / "home")}
    env.pop("HEREDITY_DB_URL", None)
    heredity = str(Path(sys.executable).parent / "heredity")
    block = README.read_text().split("## Using it", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    quick = [c for c in commands if c.split()[1] in ("models", "ls")]
    assert quick, "the README's usage block lost its quick commands"
    for c in quick:
        r = subprocess.run([heredity, *c.split()[1:]], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (c, r.stderr[-1000:])
