"""``heredity insights``: what are people using the model for, learned without reading anyone's conversation
(Clio).

Methods (Tamkin et al. 2024, arXiv 2412.13678), each a store step with lineage back to the conversations:
1. ``put conversations``: the lab server's stored conversations, a user's JSONL/parquet, or the demo corpus
   (each conversation with a user id).
2. ``scrub-pii``: emails, cards (Luhn), national ids, IPs, phones, URLs with credentials and names become
typed
   placeholders before anything else reads the text; counts per type go to the report.
3. ``extract-facets``: summary, topic, language and concern per conversation, by a model told to omit private
   details (the bundled SmolLM2 by default); memoized per conversation.
4. ``insights``: all-MiniLM-L6-v2 embeddings of the summaries, k-means (k from the data size), clusters
grouped
   into parents; a cluster is shown only with ≥ ``min_users`` users and ≥ ``min_conversations``
   conversations (the rest is "other", never named); names and descriptions written by the model from
   samples inside the cluster and contrasting samples outside it; the privacy auditor (rules + the model's
   1–5 rating) withholds any text that fails; a topic tree with sizes and shares, a 2-D map of the clusters,
   concern rates, the audit summary.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from heredity.data import put_rows
from heredity.engine.retrieval import BUNDLED, embed
from heredity.errors import HeredityError
from heredity.insights import cluster, facets, privacy
from heredity.insights.pii import scrub
from heredity.reports.stats import wilson_ci
from heredity.store import Store, read_table
from heredity.store.ops import op, rows_op

rows_op("put-conversations")  # rows made here, stored by data.io.put_rows

WITHHELD = "(withheld by the privacy auditor)"
ANALYSIS_VERSION = 4  # part of the insights step's key: bump when the analysis changes, so reruns recompute


class InsightsConfig(BaseModel):
    facet_model: str = Field(
        "smollm2-135m-instruct", description="model for facets, names and the audit rating"
    )
    embedder: str = BUNDLED
    cluster_on: Literal["summary", "conversation"] = Field(
        "conversation",
        description="text embedded for clustering: the scrubbed conversation (default: the bundled "
        "135M model's summaries cluster worse, ARI 0.44 vs 0.91 on the demo), or the facet model's summary "
        "(Clio's choice)",
    )
    k: int | None = Field(None, ge=1, description="clusters; default from the data size")
    target_cluster_size: int = Field(40, ge=2)
    levels: int = Field(
        2, ge=1, le=10, description="1 = clusters only; 2 = clusters and parent topics; 3 = their parents; …"
    )
    branching: int = Field(3, ge=2, description="clusters per parent, on average")
    min_users: int = Field(5, ge=1)
    min_conversations: int = Field(10, ge=1)
    llm_audit: bool = Field(
        True, description="also screen names and descriptions with the model's 1–5 privacy rating"
    )
    audit_max_rating: float = Field(3.0, ge=1, le=5)
    name_samples: int = Field(8, ge=1, description="summaries from inside a cluster shown to the namer")
    contrast_samples: int = Field(4, ge=0, description="summaries from outside it")
    sample_chars: int = Field(
        160, ge=20, description="each sample is cut to this many characters in the naming prompt"
    )
    max_chars: int = Field(1500, ge=100)
    batch_size: int = Field(32, ge=1)
    seed: int = 0


# ---- inputs ----------------------------------------------------------------------------------------


def normalize(rows: list[dict]) -> list[dict]:
    """Conversations as {conversation_id, user_id, messages[, true_topic]}; a clear error for anything
    else."""
    out = []
    for i, r in enumerate(rows):
        msgs = r.get("messages")
        user = r.get("user_id", r.get("user"))
        if (
            not isinstance(msgs, list)
            or not msgs
            or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs)
        ):
            raise HeredityError(f"conversation {i}: needs 'messages', a list of {{role, content}}")
        if user in (None, ""):
            raise HeredityError(
                f"conversation {i}: needs a 'user_id' (privacy thresholds count distinct users)"
            )
        row = {
            "conversation_id": str(r.get("conversation_id", r.get("id", i))),
            "user_id": str(user),
            "messages": [{"role": str(m["role"]), "content": str(m["content"])} for m in msgs],
        }
        if "true_topic" in r:
            row["true_topic"] = str(r["true_topic"])
        out.append(row)
    if not out:
        raise HeredityError("no conversations to analyse")
    return out


def read_conversations(path: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise HeredityError(f"no such file: {path}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        return normalize(pq.read_table(p).to_pylist())
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise HeredityError(
                    f"{path}:{n}: not JSON ({e.msg}); give one conversation object per line"
                ) from e
    return normalize(rows)


def server_conversations(store: Store) -> list[dict]:
    """The lab server's stored conversations, each with the user that held it (``user``; 'anonymous' if
    none)."""
    from heredity.store.conversations import Conversations

    convs = Conversations(store)
    rows = []
    for c in convs.all():
        msgs = [{"role": m.role, "content": m.content} for m in c.messages]
        if msgs:
            rows.append({"conversation_id": c.id, "user_id": c.user_id or "anonymous", "messages": msgs})
    return normalize(rows)


# ---- the steps -------------------------------------------------------------------------------------


def _scrub_step(store: Store, conv_id: str, progress: bool) -> str:
    def fn(ctx):
        from heredity.store import write_table

        rows = read_table(store.path(conv_id)).to_pylist()
        out_rows, totals = [], Counter()
        for r in rows:
            msgs = []
            for m in r["messages"]:
                s = scrub(m["content"])
                totals.update(s.counts)
                msgs.append({"role": m["role"], "content": s.text})
            out_rows.append({**r, "messages": msgs})
        out = ctx.output(
            "scrubbed", "dataset", "conversations-scrubbed", meta={"rows": len(rows), "pii": dict(totals)}
        )
        write_table(out, out_rows)
        return {"rows": len(rows), "pii": dict(totals)}

    return store.run_step("scrub-pii", {"scrubber": "heredity.insights.pii v1"}, [conv_id], fn)["scrubbed"]


def _facet_step(store: Store, scrubbed_id: str, model_id: str, config: InsightsConfig, progress: bool) -> str:
    max_chars, batch_size = config.max_chars, config.batch_size

    def fn(ctx):
        from heredity.store import write_table

        rows = read_table(store.path(scrubbed_id)).to_pylist()
        texts = [facets.render(r["messages"], max_chars) for r in rows]
        got = facets.extract(store, model_id, texts, batch_size, progress)
        out = ctx.output("facets", "dataset", "conversation-facets", meta={"rows": len(rows)})
        write_table(
            out, [{"conversation_id": r["conversation_id"], **f} for r, f in zip(rows, got, strict=True)]
        )
        return {"rows": len(rows), "concern_rate": sum(f["concern"] for f in got) / len(got)}

    cfg = {
        "facets": facets.VERSION,
        "prompts": facets.PROMPTS,
        "max_chars": max_chars,
        "batch_size": batch_size,
    }
    remote = model_id.startswith("openai:")
    if remote:
        cfg["endpoint"] = model_id
    return store.run_step("extract-facets", cfg, [scrubbed_id] if remote else [scrubbed_id, model_id], fn)[
        "facets"
    ]


def _ask(model, tok, prompts: list[str], max_tokens: int, batch_size: int) -> list[str]:
    from heredity.engine import SampleConfig, sample

    comps = sample(
        model,
        tok,
        prompts,
        SampleConfig(temperature=0, max_new_tokens=max_tokens, batch_size=batch_size, stop=["\n"]),
        progress=False,
    )
    return [" ".join(c.text.strip().split()).strip(" \"'*#:-") for c in comps]


def name_clusters(
    model,
    tok,
    summaries: list[str],
    labels: np.ndarray,
    ids: list[int],
    config: InsightsConfig,
    rng: np.random.Generator,
) -> dict[int, dict]:
    """A name and a one-sentence description per cluster, from samples inside it and contrasting ones
    outside."""
    prompts_n, prompts_d = [], []
    for c in ids:
        inside = [summaries[i] for i in np.flatnonzero(labels == c)]
        outside = [summaries[i] for i in np.flatnonzero(labels != c)]
        cut = config.sample_chars
        ins = [inside[i][:cut] for i in rng.permutation(len(inside))[: config.name_samples]]
        outs = (
            [outside[i][:cut] for i in rng.permutation(len(outside))[: config.contrast_samples]]
            if outside
            else []
        )
        ctx = ("Requests from other groups:\n" + "\n".join(f"- {x}" for x in outs) + "\n\n") if outs else ""
        ctx += "Requests in this group:\n" + "\n".join(
            f"- {x}" for x in ins
        )  # last: small models echo what is nearest
        rule = "Do not include names, places or any private details."
        prompts_n.append(
            f"{ctx}\n\nWhat topic do the requests in this group share? Reply with a topic name of two to "
            f"five words. {rule}\nTopic:"
        )
        prompts_d.append(
            f"{ctx}\n\nComplete the sentence in a few words. {rule}\nIn this group, users ask for help with"
        )
    names = [n.split(".")[0].strip()[:80] for n in _ask(model, tok, prompts_n, 12, config.batch_size)]
    descs = []
    for d in _ask(model, tok, prompts_d, 32, config.batch_size):
        d = re.sub(r"^(in this group,? )?users ask for help with\s*", "", d, flags=re.IGNORECASE).rstrip(".")
        descs.append(f"Users ask for help with {d}." if d else "")
    return {
        c: {"name": n if plausible_name(n) else "", "description": d}
        for c, n, d in zip(ids, names, descs, strict=True)
    }


ECHO = re.compile(r"\b(group|groups|request|requests|topic|user|users|summary|assistant)\b", re.IGNORECASE)


def grounded(text: str, keywords: list[str]) -> bool:
    """The model's text mentions at least one of the cluster's distinctive words (first 5 letters, so plurals
    count): a name or description that does not is about something else, and is dropped for the keywords."""
    stems = {k[:5].lower() for k in keywords}
    return bool(text) and any(w[:5] in stems for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 2)


def plausible_name(name: str) -> bool:
    """A usable cluster name: 1–8 words that do not echo the naming prompt (small models often answer with the
    prompt's own words); otherwise the cluster is named by its keywords."""
    words = name.split()
    return 1 <= len(words) <= 8 and not ECHO.search(name)


def analyse(
    rows: list[dict], fac: list[dict], config: InsightsConfig, model=None, tok=None, progress: bool = False
) -> dict:
    """Clusters, thresholds, names, audit, tree and map from scrubbed conversations and their facets (no
    store)."""
    rng = np.random.default_rng(config.seed)
    users = [r["user_id"] for r in rows]
    summaries = [
        f.get("summary") or facets.render(r["messages"], 300) for r, f in zip(rows, fac, strict=True)
    ]
    texts = (
        summaries
        if config.cluster_on == "summary"
        else [facets.render(r["messages"], config.max_chars) for r in rows]
    )
    emb = embed(texts, config.embedder)
    k = config.k or cluster.choose_k(len(rows), config.target_cluster_size, config.min_conversations)
    labels, cent = cluster.kmeans(emb, k, config.seed)
    gate = privacy.thresholds(labels, users, config.min_users, config.min_conversations)
    shown = gate["shown"]
    kw = cluster.keywords({c: [texts[i] for i in np.flatnonzero(labels == c)] for c in shown}, top=10)
    named = (
        name_clusters(model, tok, summaries, labels, shown, config, rng)
        if model is not None and shown
        else {}
    )
    n = len(rows)
    clusters = []
    for c in shown:
        idx = np.flatnonzero(labels == c)
        conc = wilson_ci(sum(bool(fac[i].get("concern")) for i in idx), len(idx))
        nm = named.get(c, {})
        words = kw.get(c, [])
        name = nm.get("name", "") if grounded(nm.get("name", ""), words) else ""
        desc = nm.get("description", "") if grounded(nm.get("description", ""), words) else ""
        clusters.append(
            {
                "id": int(c),
                "name": name or ", ".join(words[:3]) or f"cluster {c}",
                "description": desc,
                "keywords": words[:5],
                "conversations": len(idx),
                "users": gate["users"][c],
                "share": len(idx) / n,
                "concern_rate": conc,
                "languages": dict(Counter(fac[i].get("language", "") for i in idx).most_common(3)),
            }
        )
    # the audit: every text the report would show (names, descriptions, keywords), withheld on failure
    texts_shown = [(j, key) for j, cl in enumerate(clusters) for key in ("name", "description", "keywords")]
    values = [
        ", ".join(clusters[j][key]) if key == "keywords" else clusters[j][key] for j, key in texts_shown
    ]
    use_llm = config.llm_audit and model is not None
    au = privacy.audit(values, model if use_llm else None, tok if use_llm else None, config.audit_max_rating)
    for (j, key), ok in zip(texts_shown, au.passed, strict=True):
        if not ok:
            clusters[j][key] = [] if key == "keywords" else WITHHELD
    # the hierarchy: parents over the shown clusters (never over hidden ones)
    levels = [clusters]
    cur_cent = np.array([cent[c["id"]] for c in clusters]) if clusters else np.zeros((0, emb.shape[1]))
    cur_sizes = [c["conversations"] for c in clusters]
    cur_nodes = clusters
    for depth in range(1, config.levels):
        if len(cur_nodes) <= 1:
            break
        plabels, pcent = cluster.parents(cur_cent, cur_sizes, config.branching, config.seed)
        if len(pcent) >= len(cur_nodes):
            break
        parents = []
        for p in range(len(pcent)):
            kids = [cur_nodes[i] for i in np.flatnonzero(plabels == p)]
            parents.append(
                {
                    "id": f"L{depth + 1}-{p}",
                    "children": [kid["id"] for kid in kids],
                    "conversations": sum(kid["conversations"] for kid in kids),
                    "share": sum(kid["conversations"] for kid in kids) / n,
                    "name": " / ".join(kid["name"] for kid in kids if kid["name"] != WITHHELD)[:120]
                    or WITHHELD,
                }
            )
        if model is not None:
            prompts = []
            for p in range(len(pcent)):
                kids = [
                    cur_nodes[i]["name"]
                    for i in np.flatnonzero(plabels == p)
                    if cur_nodes[i]["name"] != WITHHELD
                ]
                prompts.append(
                    "Group names:\n"
                    + "\n".join(f"- {x}" for x in kids)
                    + "\n\nGive one short name of at most five words covering all of these groups. "
                    "Answer with the name only."
                )
            pn = _ask(model, tok, prompts, 12, config.batch_size)
            pa = privacy.audit(pn, None, None, config.audit_max_rating)
            au.summary["screened"] += pa.summary["screened"]
            au.summary["withheld"] += pa.summary["withheld"]
            for p, (name, ok) in enumerate(zip(pn, pa.passed, strict=True)):
                name = name.split(".")[0].strip()
                kid_words = [
                    w for i in np.flatnonzero(plabels == p) for w in cur_nodes[i].get("keywords", [])
                ]
                kid_words += [
                    w
                    for i in np.flatnonzero(plabels == p)
                    for w in re.findall(r"[a-z]+", cur_nodes[i]["name"].lower())
                ]
                if ok and plausible_name(name) and grounded(name, kid_words):
                    parents[p]["name"] = name
        for i, node in enumerate(cur_nodes):
            node["parent"] = parents[int(plabels[i])]["id"]
        levels.append(parents)
        cur_nodes, cur_cent, cur_sizes = parents, pcent, [p["conversations"] for p in parents]
    xy = cluster.project_2d(np.array([cent[c["id"]] for c in clusters])) if clusters else np.zeros((0, 2))
    for c, (x, y) in zip(clusters, xy, strict=True):
        c["x"], c["y"] = float(x), float(y)
    out = {
        "conversations": n,
        "users": len(set(users)),
        "k": int(k),
        "levels": levels,
        "other": {
            "conversations": gate["other"],
            "share": gate["other"] / n,
            "clusters": len(gate["sizes"]) - len(shown),
        },
        "audit": au.summary,
        "concern_rate": wilson_ci(sum(bool(f.get("concern")) for f in fac), n),
    }
    if all("true_topic" in r for r in rows):
        out["truth"] = truth_table(rows, labels, shown, clusters)
        # the same k-means on the other text, for comparison (a generated corpus only: the truth is known)
        other = "summary" if config.cluster_on == "conversation" else "conversation"
        alt = (
            summaries
            if other == "summary"
            else [facets.render(r["messages"], config.max_chars) for r in rows]
        )
        alt_labels, _ = cluster.kmeans(embed(alt, config.embedder), k, config.seed)
        out["truth"]["ari_other"] = {
            "cluster_on": other,
            "ari": cluster.adjusted_rand([r["true_topic"] for r in rows], alt_labels),
        }
    return out


def truth_table(rows: list[dict], labels: np.ndarray, shown: list[int], clusters: list[dict]) -> dict:
    """Recovered vs true topics (a generated corpus): ARI over all conversations, and per true topic the shown
    cluster holding most of it, with purity and recall."""
    true = [r["true_topic"] for r in rows]
    names = {c["id"]: c["name"] for c in clusters}
    table = []
    for t in sorted(set(true)):
        idx = [i for i, x in enumerate(true) if x == t]
        counts = Counter(int(labels[i]) for i in idx if int(labels[i]) in names)
        if not counts:
            table.append(
                {
                    "true_topic": t,
                    "conversations": len(idx),
                    "cluster": None,
                    "name": "not shown (below the privacy thresholds)",
                    "recall": 0.0,
                    "purity": None,
                }
            )
            continue
        c, hit = counts.most_common(1)[0]
        size = int((labels == c).sum())
        table.append(
            {
                "true_topic": t,
                "conversations": len(idx),
                "cluster": c,
                "name": names[c],
                "recall": hit / len(idx),
                "purity": hit / size,
            }
        )
    return {"ari": cluster.adjusted_rand(true, labels), "table": table}


@op(
    "insights",
    2,
    note="v2: the fused decode step refused for mlp_bias / sliding-window models, whose samples it got wrong",
)
@op(
    "extract-facets",
    2,
    note="v2: the fused decode step refused for mlp_bias / sliding-window models, whose samples it got wrong",
)
@op(
    "scrub-pii",
    2,
    note="v2: the fused decode step refused for mlp_bias / sliding-window models, whose samples it got wrong",
)
def run(store: Store, config: InsightsConfig, rows: list[dict], source: str, progress: bool = True) -> dict:
    """The whole pipeline as store steps; returns {report, markdown, outcome, files}."""
    from heredity.models import materialize, parse_spec

    rows = normalize(rows)
    conv_id = put_rows(store, rows, "conversations", op="put-conversations", config={"source": source})
    scrubbed_id = _scrub_step(store, conv_id, progress)
    spec = parse_spec(config.facet_model)
    model_id = config.facet_model if spec.kind == "openai" else materialize(spec, store)
    facets_id = _facet_step(store, scrubbed_id, model_id, config, progress)
    remote = spec.kind == "openai"

    def fn(ctx):
        t1 = time.perf_counter()
        # everything read here from the input artifacts (the naming model among them, or the endpoint in the
        # key)
        scrubbed = read_table(store.path(scrubbed_id)).to_pylist()
        fac = read_table(store.path(facets_id)).to_pylist()
        pii = store.get(scrubbed_id).meta.get("pii", {})
        model, tok = facets.open_model(store, model_id)
        res = analyse(scrubbed, fac, config, model, tok, progress)
        report = {
            "config": config.model_dump(),
            "source": source,
            "pii": pii,
            **res,
            "seconds": round(time.perf_counter() - t1, 1),
        }
        report["outcome"] = outcome(report)
        out = ctx.output("report", "report", "insights", meta={"outcome": report["outcome"]})
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(markdown(report))
        plot(report, out / "map.png")
        return {"clusters_shown": len(res["levels"][0]), "withheld": res["audit"]["withheld"]}

    rid = store.run_step(
        "insights",
        {
            "config": config.model_dump(),
            "source": source,
            "analysis": ANALYSIS_VERSION,
            **({"endpoint": model_id} if remote else {}),
        },
        [facets_id, scrubbed_id, conv_id, *([] if remote else [model_id])],
        fn,
    )["report"]
    report = json.loads((store.path(rid) / "report.json").read_text())
    return {
        "report": rid,
        "markdown": markdown(report),
        "outcome": report["outcome"],
        "files": [str(store.path(rid) / f) for f in ("report.md", "report.json", "map.png")],
    }


# ---- output ----------------------------------------------------------------------------------------


def outcome(report: dict) -> str:
    shown = report["levels"][0]
    s = (
        f"{report['conversations']} conversations from {report['users']} users → {report['k']} clusters, "
        f"{len(shown)} shown (≥ {report['config']['min_users']} users and ≥ "
        f"{report['config']['min_conversations']} conversations each); {report['other']['conversations']} "
        f"conversations ({report['other']['share']:.0%}) in 'other'; the auditor withheld "
        f"{report['audit']['withheld']} of {report['audit']['screened']} texts"
    )
    if "truth" in report:
        s += f"; adjusted Rand index vs the true topics {report['truth']['ari']:.2f}"
    return s


def markdown(report: dict) -> str:
    cfg = report["config"]
    pii = ", ".join(f"{k} {v}" for k, v in sorted(report.get("pii", {}).items())) or "none"
    lines = [
        "# insights",
        "",
        f"Source: {report['source']}. Facets by {cfg['facet_model']}; embeddings {cfg['embedder']} of each "
        f"conversation's {cfg['cluster_on']}; k-means k = {report['k']}; privacy: ≥ {cfg['min_users']} users "
        f"and ≥ {cfg['min_conversations']} conversations per shown cluster; auditor: "
        f"rules{' + model rating ≤ ' + str(cfg['audit_max_rating']) if cfg['llm_audit'] else ''}.",
        "",
        f"PII replaced before analysis: {pii}.",
        "",
        "## Topic tree",
        "",
    ]
    levels = report["levels"]
    by_parent: dict[str, list[dict]] = {}
    for c in levels[0]:
        by_parent.setdefault(c.get("parent", ""), []).append(c)
    top = levels[-1] if len(levels) > 1 else []
    lines += [
        "| topic | conversations | share | users | concern rate | keywords |",
        "|---|---|---|---|---|---|",
    ]

    def row(c: dict, indent: str) -> str:
        cr = c["concern_rate"]
        return (
            f"| {indent}{c['name']} | {c['conversations']} | {c['share']:.1%} | {c['users']} | "
            f"{cr['mean']:.2f} [{cr['lo']:.2f}, {cr['hi']:.2f}] | {', '.join(c['keywords'][:5])} |"
        )

    if top:
        for p in sorted(top, key=lambda p: -p["conversations"]):
            lines.append(f"| **{p['name']}** | {p['conversations']} | {p['share']:.1%} | | | |")
            for c in sorted(by_parent.get(p["id"], []), key=lambda c: -c["conversations"]):
                lines.append(row(c, "↳ "))
    else:
        lines += [row(c, "") for c in sorted(levels[0], key=lambda c: -c["conversations"])]
    o = report["other"]
    lines.append(
        f"| other (clusters below the thresholds, never named) | {o['conversations']} "
        f"| {o['share']:.1%} | | | |"
    )
    lines += ["", "## Cluster descriptions", ""]
    lines += [
        f"- **{c['name']}**: {c['description'] or '—'}"
        for c in sorted(levels[0], key=lambda c: -c["conversations"])
    ]
    a = report["audit"]
    lines += [
        "",
        f"Privacy audit: {a['screened']} texts screened, {a['withheld']} withheld"
        + (f" ({', '.join(f'{k} {v}' for k, v in a['by_reason'].items())})" if a.get("by_reason") else "")
        + ".",
        "",
    ]
    if "truth" in report:
        t = report["truth"]
        alt = t.get("ari_other")
        lines += [
            "## Recovered vs true topics (generated corpus)",
            "",
            f"Adjusted Rand index over all conversations: **{t['ari']:.3f}** (clustering each conversation's "
            f"{cfg['cluster_on']})"
            + (f"; clustering the {alt['cluster_on']} instead: {alt['ari']:.3f}" if alt else "")
            + ".",
            "",
            "| true topic | conversations | recovered as | recall | purity |",
            "|---|---|---|---|---|",
        ]
        for r in t["table"]:
            pur = "—" if r["purity"] is None else f"{r['purity']:.2f}"
            lines.append(
                f"| {r['true_topic']} | {r['conversations']} | {r['name']} | {r['recall']:.2f} | {pur} |"
            )
        lines.append("")
    lines += [f"**Outcome.** {report['outcome']}.", "", f"Run time {report.get('seconds', 0):.0f} s.", ""]
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cl = report["levels"][0]
    fig, ax = plt.subplots(figsize=(8, 6))
    if cl:
        sizes = np.array([c["conversations"] for c in cl], float)
        conc = [c["concern_rate"]["mean"] for c in cl]
        sc = ax.scatter(
            [c["x"] for c in cl],
            [c["y"] for c in cl],
            s=60 + 1500 * sizes / sizes.max(),
            c=conc,
            cmap="Reds",
            vmin=0,
            vmax=1,
            alpha=0.7,
            edgecolors="k",
        )
        for c in cl:
            ax.annotate(c["name"][:40], (c["x"], c["y"]), fontsize=8, ha="center", va="center")
        fig.colorbar(sc, ax=ax, label="concern rate")
    ax.set_title(
        f"Clusters shown ({len(cl)}; 'other': {report['other']['conversations']} conversations), PCA of "
        "centroids"
    )
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
