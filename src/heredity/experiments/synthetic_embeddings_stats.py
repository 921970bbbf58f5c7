"""The statistics of synthetic-embeddings: per-arm means over training seeds, the declared contrasts (a paired
t over seeds, Holm-adjusted over the family, with a paired bootstrap over queries beside it), per-topic
nDCG and the swap trace. Everything here works on the per-query rows ``engine.encoder.retrieval_scores``
stores; nothing is trained or embedded."""

from __future__ import annotations

import numpy as np

from heredity.reports.stats import (
    fmt_ci,
    fmt_p,
    holm_family,
    mean_ci,
    min_detectable,
    paired_bootstrap_test,
    paired_test,
    rate_ci,
    spread_note,
    verdict,
)

METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10")
REFERENCES = ("untouched", "BM25", "decoder untouched")  # one model each: scored under seed 0
# (name, arm a, arm b, corpus, measure, hypothesised sign of a − b): declared before the run (the Holm family)
CONTRASTS = (
    ("synthetic − untouched @ pydoc", "synthetic", "untouched", "pydoc", "ndcg@10", 1),
    ("synthetic − untouched @ facts", "synthetic", "untouched", "facts", "ndcg@10", 1),
    ("synthetic − − hard negatives @ pydoc", "synthetic", "− hard negatives", "pydoc", "ndcg@10", 1),
    ("synthetic − − instruction prefix @ pydoc", "synthetic", "− instruction prefix", "pydoc", "ndcg@10", 1),
    ("synthetic − − brainstorm @ pydoc", "synthetic", "− brainstorm", "pydoc", "ndcg@10", 1),
    (
        "synthetic − program-written pairs @ pydoc",
        "synthetic",
        "program-written pairs",
        "pydoc",
        "ndcg@10",
        0,
    ),
    (
        "writer over-produces facts − synthetic @ pydoc",
        "writer over-produces facts",
        "synthetic",
        "pydoc",
        "ndcg@10",
        -1,
    ),
    (
        "writer swaps capital/founded − synthetic: swap share @ facts",
        "writer swaps capital/founded",
        "synthetic",
        "facts",
        "swap",
        1,
    ),
)
FAMILY = tuple(c[0] for c in CONTRASTS)


def contrasts(config) -> list[tuple]:
    """Every contrast the config makes, declared before the run: the eight above, and with other writers
    each one against the writer of the recipe, with a decoder its trained arms against it untouched and its
    synthetic arm against the encoder's (no direction hypothesised where the literature gives none at this
    scale)."""
    out = list(CONTRASTS)
    for arm in config.writer_arms:
        out.append((f"{arm} − synthetic @ pydoc", arm, "synthetic", "pydoc", "ndcg@10", 0))
    if config.decoder:
        for arm in config.decoder_arms:
            a = f"decoder: {arm}"
            out.append((f"{a} − decoder untouched @ pydoc", a, "decoder untouched", "pydoc", "ndcg@10", 1))
        if "synthetic" in config.decoder_arms:
            out.append(
                (
                    "decoder: synthetic − synthetic @ pydoc",
                    "decoder: synthetic",
                    "synthetic",
                    "pydoc",
                    "ndcg@10",
                    0,
                )
            )
    return out


def family(config) -> list[str]:
    """The names of ``contrasts(config)``: the Holm family a config must declare."""
    return [c[0] for c in contrasts(config)]


def swap_values(rows: list[dict], swap_target: dict[str, str]) -> dict[str, float]:
    """Per capital / founding-year query: 1 when its first document is the same country's other attribute."""
    return {
        r["query"]: float(r["top1"] == swap_target[r["query"]]) for r in rows if r["query"] in swap_target
    }


def per_query(scores: dict, arm: str, seeds: int, corpus, measure: str) -> list[dict[str, float]]:
    """One {query: value} per seed (the references have one model: their seed 0 stands for every seed)."""
    out = []
    for s in range(seeds):
        rows = scores[(arm, 0 if arm in REFERENCES else s, corpus.name)]
        out.append(
            swap_values(rows, corpus.swap_target)
            if measure == "swap"
            else {r["query"]: float(r[measure]) for r in rows}
        )
    return out


def arm_table(corpora: dict, scores: dict, arms: list[str], seeds: int) -> dict:
    """corpus → arm → metric → interval: a trained arm's mean over seeds (t, unit: training seeds), a
    reference's mean over queries (t, unit: queries)."""
    table = {}
    for name, (corpus, _) in corpora.items():
        table[name] = {}
        for arm in arms:
            row = {}
            for m in (*METRICS, *(["swap"] if corpus.swap_target else [])):
                vals = per_query(scores, arm, seeds, corpus, m)
                if arm in REFERENCES:
                    v = list(vals[0].values())
                    binary = all(x in (0.0, 1.0) for x in v)  # recall@1, swap; recall@10 with one relevant
                    ci = rate_ci(int(sum(v)), len(v)) if binary else mean_ci(v, bounds=(0, 1))
                    row[m] = {**ci, "unit": "queries"}
                else:
                    ci = mean_ci([np.mean(list(v.values())) for v in vals], bounds=(0, 1), allow_binary=True)
                    row[m] = {**ci, "unit": "training seeds"}
            row["topics"] = _topics(scores, arm, seeds, name)
            table[name][arm] = row
    return table


def _topics(scores: dict, arm: str, seeds: int, name: str) -> dict[str, float]:
    """Mean nDCG@10 per query topic (over seeds, then queries)."""
    acc: dict[str, list[float]] = {}
    for s in range(1 if arm in REFERENCES else seeds):
        for r in scores[(arm, s, name)]:
            acc.setdefault(r["topic"] or name, []).append(float(r["ndcg@10"]))
    return {t: float(np.mean(v)) for t, v in sorted(acc.items())}


def contrast(spec: tuple, corpora: dict, scores: dict, seeds: int) -> dict:
    """One declared contrast: the paired t over training seeds and the paired bootstrap over queries."""
    name, a, b, corpus_name, measure, expected = spec
    corpus = corpora[corpus_name][0]
    va = per_query(scores, a, seeds, corpus, measure)
    vb = per_query(scores, b, seeds, corpus, measure)
    qs = sorted(va[0])
    seeds_test = paired_test(
        [np.mean([v[q] for q in qs]) for v in va], [np.mean([v[q] for q in qs]) for v in vb], "training seeds"
    )
    items = paired_bootstrap_test(
        [np.mean([v[q] for v in va]) for q in qs], [np.mean([v[q] for v in vb]) for q in qs], "queries"
    )
    return {
        "name": name,
        "a": a,
        "b": b,
        "corpus": corpus_name,
        "measure": measure,
        "expected": expected,
        "seeds": seeds_test,
        "queries": items,
    }


def analyse(config, corpora: dict, scores: dict, students: dict, data: dict, published: dict) -> dict:
    """The report: config, arm table, contrasts with Holm-adjusted verdicts, published anchors, outcome."""
    arms = [r for r in REFERENCES if r != "decoder untouched" or config.decoder] + list(students)
    tests = [contrast(c, corpora, scores, config.seeds) for c in contrasts(config) if c[3] in corpora]
    adjusted = holm_family({t["name"]: t["seeds"]["p"] for t in tests}, config.holm_family)
    for t in tests:
        t["holm_p"] = adjusted[t["name"]]
        t["verdict"] = verdict(t["seeds"], t["expected"], p=t["holm_p"])
        if t["verdict"]["result"] == "null":
            t["mde"] = min_detectable(t["seeds"]["sd"], t["seeds"]["n"], family=len(config.holm_family))
    return {
        "config": config.model_dump(),
        "arms": arms,
        "corpora": {
            n: {"documents": len(c.corpus), "queries": len(c.queries), "instruction": c.instruction}
            for n, (c, _) in corpora.items()
        },
        "table": arm_table(corpora, scores, arms, config.seeds),
        "contrasts": tests,
        "published": published,
        "students": students,
        "spread_note": spread_note(config.seeds),
        "outcome": outcome(tests),
    }


def outcome(tests: list[dict]) -> str:
    """One line per contrast as its Holm-adjusted test over training seeds reads."""
    parts = []
    for t in tests:
        s = t["seeds"]
        what = "swap share" if t["measure"] == "swap" else "nDCG@10"
        parts.append(
            f"{t['a']} vs {t['b']} on {t['corpus']} ({what}): "
            f"{fmt_ci({'mean': s['diff'], 'lo': s['lo'], 'hi': s['hi']})}, Holm {fmt_p(t['holm_p'])} "
            f"(unit: training seeds, n = {s['n']}) — {t['verdict']['words']}"
        )
    return "; ".join(parts)
