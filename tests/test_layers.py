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
