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
            if n.get("also_made_by"):
                others = ", ".join(f"{o['op']} {o['key']}" for o in n["also_made_by"])
                head += f"\n  [dim]identical bytes also made by: {others} (`--step KEY` traces one)[/]"
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
            lines.append(f"  {p['id'].replace('-', '_')} -->|{n['step']['op']}| {n['id'].replace('-', '_')}")
            walk(p)

    walk(node)
    return "\n".join(lines)


KIND_COLORS = {
    "model": "#2563eb",
    "adapter": "#7c3aed",
    "dataset": "#059669",
    "report": "#d97706",
    "tokenizer": "#db2777",
    "prompt": "#0891b2",
}


def graph(store, root: str | None = None) -> dict:
    """Artifacts as nodes and (input → output, step op) as edges: the whole store, or one artifact's ancestry
    and descendants when ``root`` is given."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from heredity.store.db import ArtifactRow, StepRow

    with Session(store.engine) as s:
        steps = list(s.scalars(select(StepRow)))
        arts = {a.id: a for a in s.scalars(select(ArtifactRow))}
    edges = []
    for st in steps:
        for out in (st.outputs or {}).values():
            for inp in st.inputs or []:
                if inp in arts and out in arts:
                    edges.append({"source": inp, "target": out, "op": st.op})
    keep = set(arts)
    if root is not None:
        up, down = {root}, {root}
        changed = True
        while changed:
            changed = False
            for e in edges:
                if e["target"] in up and e["source"] not in up:
                    up.add(e["source"])
                    changed = True
                if e["source"] in down and e["target"] not in down:
                    down.add(e["target"])
                    changed = True
        keep = up | down
    ops = {st.key: st.op for st in steps}
    nodes = [
        {
            "id": a.id,
            "kind": a.kind,
            "name": a.name,
            "op": ops.get(a.step_key, ""),
            "created_at": a.created_at.isoformat(),
        }
        for a in arts.values()
        if a.id in keep
    ]
    nodes.sort(key=lambda n: n["created_at"])
    edges = [e for e in edges if e["source"] in keep and e["target"] in keep]
    edges = [dict(t) for t in {tuple(sorted(e.items())) for e in edges}]
    return {"nodes": nodes, "edges": sorted(edges, key=lambda e: (e["source"], e["target"]))}


def layout(g: dict, col_w: int = 290, row_h: int = 64) -> dict:
    """Layered positions: an artifact's column is the length of the longest path to it from a root."""
    depth = {n["id"]: 0 for n in g["nodes"]}
    for _ in range(len(depth)):
        changed = False
        for e in g["edges"]:
            if depth[e["target"]] < depth[e["source"]] + 1:
                depth[e["target"]] = depth[e["source"]] + 1
                changed = True
        if not changed:
            break
    cols: dict[int, list[str]] = {}
    for n in g["nodes"]:
        cols.setdefault(depth[n["id"]], []).append(n["id"])
    pos = {aid: (16 + d * col_w, 16 + i * row_h) for d, ids in cols.items() for i, aid in enumerate(ids)}
    width = 16 + (max(cols, default=0) + 1) * col_w
    height = 16 + max((len(v) for v in cols.values()), default=1) * row_h
    return {"pos": pos, "width": width, "height": height}


def as_svg(g: dict, href=lambda aid: f"/artifacts/{aid}", highlight: str | None = None) -> str:
    """The graph as a standalone SVG; each artifact is a link (``href(id)``)."""
    from html import escape

    lay = layout(g)
    pos, w, h = lay["pos"], 240, 44
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{lay["width"]}" '
        f'height="{lay["height"]}" viewBox="0 0 {lay["width"]} {lay["height"]}" '
        'font-family="system-ui, sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#94a3b8"/></marker></defs>',
    ]
    for e in g["edges"]:
        (x1, y1), (x2, y2) = pos[e["source"]], pos[e["target"]]
        x1, y1, y2 = x1 + w, y1 + h / 2, y2 + h / 2
        mx = (x1 + x2) / 2
        parts.append(
            f'<path d="M {x1} {y1} C {mx} {y1}, {mx} {y2}, {x2} {y2}" fill="none" stroke="#94a3b8" '
            f'stroke-width="1.3" marker-end="url(#arrow)"><title>{escape(e["op"])}</title></path>'
        )
    for n in g["nodes"]:
        x, y = pos[n["id"]]
        color = KIND_COLORS.get(n["kind"], "#475569")
        stroke = (
            ' stroke="#dc2626" stroke-width="3"'
            if n["id"] == highlight
            else f' stroke="{color}" stroke-width="1.5"'
        )
        name = n["name"] if len(n["name"]) <= 32 else n["name"][:31] + "…"
        sub = f"{n['id']} · {n['op']}"
        sub = sub if len(sub) <= 40 else sub[:39] + "…"
        parts.append(
            f'<a href="{escape(href(n["id"]))}" class="node" data-id="{n["id"]}">'
            f"<title>{escape(n['kind'])} {escape(n['name'])} ({escape(n['op'])})</title>"
            f'<rect x="{x}" y="{y}" rx="6" width="{w}" height="{h}" fill="white"{stroke}/>'
            f'<rect x="{x}" y="{y}" rx="3" width="6" height="{h}" fill="{color}"/>'
            f'<text x="{x + 14}" y="{y + 18}" font-weight="600" fill="#0f172a">{escape(name)}</text>'
            f'<text x="{x + 14}" y="{y + 34}" fill="#64748b">{escape(sub)}</text></a>'
        )
    parts.append("</svg>")
    return "".join(parts)
