"""The layers of ARCHITECTURE.md hold: a module imports (at the top or inside a function) only the heredity
packages its row of the table allows, so the table cannot drift from the code."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "heredity"


def allowed() -> dict[str, set[str]]:
    """ARCHITECTURE.md's table: module → the heredity packages it may import ("everything below" and
    "everything" read as the rows above them in the table)."""
    rows = re.findall(r"^\| `([^|]+)` \| ([^|]+) \|$", (ROOT / "ARCHITECTURE.md").read_text(), re.M)
    table, below = {}, []
    for names, may in rows:
        mods = [m.strip(" `") for m in names.split(",")]
        if may.strip().startswith("everything"):
            ok = set(below) if "below" in may else {"*"}
            ok -= set(re.findall(r"`(\w+)`", may.split("(", 1)[1])) if "(not" in may else set()
        else:
            ok = set(re.findall(r"`(\w+)`", may.split("(not", 1)[0]))
        for m in mods:
            table[m] = ok
        below += mods
    return table


def imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("heredity."):
            out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("heredity.")}
    return out


def test_every_module_imports_only_what_its_layer_may():
    table = allowed()
    assert {"store", "engine", "evals", "experiments", "server"} <= set(table), table
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        layer = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem != "__init__" else None
        if layer not in table or "*" in table[layer]:
            continue
        for used in imports(path) - {layer} - table[layer]:
            bad.append(f"{rel} imports heredity.{used}")
    assert not bad, f"imports against ARCHITECTURE.md's layers: {bad}"


def test_the_layer_check_can_fail(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from heredity.evals.verify import load_checker\n")
    assert "evals" in imports(p) and "evals" not in allowed()["engine"]


def test_an_experiment_reads_like_a_methods_section():
    """ARCHITECTURE.md's rule for experiments/: no function over 80 lines, and a NAME_render.py (markdown,
    plot) never imports its experiment, so rendering a committed report needs none of the recipe."""
    long, cycles = [], []
    for path in sorted((SRC / "experiments").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > 80:
                    long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
        if path.stem.endswith("_render"):
            experiment = f"heredity.experiments.{path.stem.removesuffix('_render')}"
            typing_only = {
                id(n)
                for block in ast.walk(tree)
                if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
                for n in ast.walk(block)
            }  # an import for annotations only is not run
            for node in ast.walk(tree):
                if id(node) in typing_only:
                    continue
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else []
                )
                cycles += [f"{path.name} imports {n}" for n in names if n == experiment]
    assert not long, f"split these into named helpers: {long}"
    assert not cycles, cycles
