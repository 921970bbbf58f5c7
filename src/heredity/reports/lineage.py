"""Render a lineage (``Store.lineage``) as a terminal tree, JSON or a Mermaid graph."""

from __future__ import annotations

import json

from rich.tree import Tree


def _short_config(cfg: dict, limit: int = 6) -> str:
    items = [f"{k}={v}" for k, v in cfg.items() if not isinstance(v, (dict, list)) or len(str(v)) < 40]
    more = len(cfg) - len(items[:limit])
    return ", ".join(items[:limit]) + (f", … (+{more})" if more > 0 else "")


def as_tree(node: dict) -> Tree:
    def label(n: dict) -> str:
        head = f"[bold]{n['id']}[/] {n['kind']} [cyan]{n['name']}[/]"
        if n.get("see_above"):
            return head + " (see above)"
        origin = n.get("meta", {}).get("origin")
        if origin:
            head += f" [dim]origin {origin}[/]"
        st = n.get("step")
        if st:
            head += f"\n  ← step [magenta]{st['op']}[/] {_short_config(st['config'])}"
            if st.get("seed") is not None:
                head += f" seed={st['seed']}"
            m = {k: v for k, v in st["metrics"].items() if not isinstance(v, (list, dict))}
            if m:
                head += f"\n  [dim]metrics {_short_config(m, 5)}[/]"
            head += f"\n  [dim]{st['ended_at'][:19]} on {st['host']}, heredity {st['code_version']}[/]"
        return head

    def add(tree: Tree, n: dict) -> None:
        for p in n.get("parents", []):
            add(tree.add(label(p)), p)

    root = Tree(label(node))
    add(root, node)
    return root


def as_json(node: dict) -> str:
    return json.dumps(node, indent=2, default=str)


def as_mermaid(node: dict) -> str:
    lines, seen = ["graph TD"], set()

    def walk(n: dict) -> None:
        if n["id"] in seen or n.get("see_above"):
            return
        seen.add(n["id"])
        lines.append(f'  {n["id"].replace("-", "_")}["{n["kind"]}: {n["name"]}<br/>{n["id"]}"]')
        for p in n.get("parents", []):
            lines.append(f'  {p["id"].replace("-", "_")} -->|{n["step"]["op"]}| {n["id"].replace("-", "_")}')
            walk(p)

    walk(node)
    return "\n".join(lines)
