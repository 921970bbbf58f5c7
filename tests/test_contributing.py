"""docs/contributing.md's walkthrough, followed on a toy experiment: one new module, nothing else edited by
hand, and the experiment is listed, runs from the CLI with ``--set``, stores its op's output (registered
beside its code with ``@op``) and refuses an unknown config field."""

import importlib
import sys
import textwrap

import pytest
from typer.testing import CliRunner

import heredity.experiments as experiments
from heredity.store import ops

TOY = '''
"""A toy: counting, to show what a new experiment needs."""

from pydantic import BaseModel, Field

from heredity.experiments import experiment
from heredity.store.ops import op


class Config(BaseModel):
    n: int = Field(3, ge=1)

    @classmethod
    def presets(cls):
        return {"quick": cls(), "paper": cls(n=1000)}


@op("toy-walkthrough-count", version=1)
def count(store, n: int) -> str:
    def write(ctx):
        out = ctx.output("report", "report", "toy-count")
        (out / "count.txt").write_text(" ".join(map(str, range(n))))
        return {"n": n}

    return store.run_step("toy-walkthrough-count", {"n": n}, [], write)["report"]


@experiment("toy-walkthrough", question="Does a new experiment need more than one module?")
def run(store, config, progress=True):
    rid = count(store, config.n)
    return {"outcome": f"counted to {config.n}", "report": rid, "lineage_of": rid}
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy module in a folder of the experiments package (as a new file in
    src/heredity/experiments/ is)."""
    (tmp_path / "toy_walkthrough.py").write_text(textwrap.dedent(TOY))
    monkeypatch.setattr(experiments, "__path__", [*experiments.__path__, str(tmp_path)])
    experiments.REGISTRY.refresh()
    yield
    sys.modules.pop("heredity.experiments.toy_walkthrough", None)
    ops.OPS.pop("toy-walkthrough-count", None)
    monkeypatch.undo()
    experiments.REGISTRY.refresh()


def test_a_new_experiment_is_one_module(toy, tmp_path, monkeypatch):
    from heredity.cli import app

    monkeypatch.setenv("HEREDITY_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HEREDITY_DB_URL", raising=False)
    runner = CliRunner()
    listing = runner.invoke(app, ["run", "--list"])
    assert (
        listing.exit_code == 0
        and "toy-walkthrough" in listing.output
        and "more than one module" in listing.output
    )
    first = runner.invoke(app, ["run", "toy-walkthrough", "--set", "n=5"])
    assert first.exit_code == 0, first.output
    assert "counted to 5" in first.output and "heredity lineage r-" in first.output
    assert ops.op_version("toy-walkthrough-count") == 1  # registered beside its code, keyed with its version
    from heredity.store import Store

    (report,) = [a for a in Store().list("report") if a.name == "toy-count"]
    assert (Store().path(report.id) / "count.txt").read_text() == "0 1 2 3 4"
    again = runner.invoke(app, ["run", "toy-walkthrough", "--set", "n=5", "--json"])
    assert again.exit_code == 0 and "counted to 5" in again.output
    bad = runner.invoke(app, ["run", "toy-walkthrough", "--set", "m=5"])
    assert bad.exit_code != 0


def test_an_op_name_cannot_be_taken_twice():
    ops.registry()  # every module imported, so `finetune` is registered
    with pytest.raises(RuntimeError, match="already registered"):
        ops.op("finetune", version=9)(lambda store: None)


def test_an_op_is_found_before_its_module_is_imported():
    """A step's key holds its op's version: a lookup must not depend on whether the module that registers the
    op happens to be imported yet (a fresh interpreter has imported none of them)."""
    import subprocess
    import sys

    code = (
        "import sys; from heredity.store.ops import op_version, is_distributed; "
        "assert 'heredity.experiments.subliminal_weights' not in sys.modules; "
        "print(op_version('eval-panel'), op_version('make-teacher-data'), is_distributed('finetune'), "
        "op_version('report-anything'), op_version('a-user-step'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1", "True", "2", "None"]


def test_every_experiment_is_found_by_its_decorator_alone():
    """The registry is read from the modules' source: every module of the package that declares an experiment
    is listed under its name, and importing it gives the module whose run carries that name."""
    found = experiments.discover()
    assert {"subliminal-weights", "subliminal-digits", "chatgpt"} <= set(found)
    for name, (module, question) in found.items():
        assert question, name
        mod = importlib.import_module(module)
        assert mod.run.experiment["name"] == name


def test_a_new_experiments_page_is_listed_without_an_edit(toy, tmp_path, monkeypatch):
    """Step 3: with its page written, the README's table and the site's nav list the new experiment when
    `python -m heredity.docsite` regenerates them (its question from its decorator);
    nothing else moves."""
    from heredity import docsite

    pages = tmp_path / "docs" / "experiments"
    pages.mkdir(parents=True)
    for page in (docsite.DOCS / "experiments").glob("*.md"):
        (pages / page.name).write_text(page.read_text())
    (pages / "toy-walkthrough.md").write_text("# toy-walkthrough\n")
    monkeypatch.setattr(docsite, "DOCS", tmp_path / "docs")
    readme, nav = docsite.readme(), docsite.mkdocs_nav()
    row = (
        "| [toy-walkthrough](docs/experiments/toy-walkthrough.md) | Does a new experiment need more than one "
        "module? | — | no report yet: see [its page](docs/experiments/toy-walkthrough.md) |"
    )
    assert row in readme.splitlines()
    assert "      - toy-walkthrough: experiments/toy-walkthrough.md" in nav.splitlines()
    old_readme, old_nav = (docsite.ROOT / "README.md").read_text(), (docsite.ROOT / "mkdocs.yml").read_text()
    assert readme.replace(row + "\n", "") == old_readme
    assert nav.replace("      - toy-walkthrough: experiments/toy-walkthrough.md\n", "") == old_nav
