"""The statistics of format-spread, on correctness matrices (items × formats, 1 = the model's top option is
the right one). Nothing here runs a model.

* ``spread``: max − min of per-format accuracy, with a percentile bootstrap over items (resampled within
  each task), and a permutation p-value for "the formats differ at all": each item's row is shuffled
  across formats (under the null that format does not matter, an item's outcomes are exchangeable across
  formats), the statistic being the spread itself. The unit is items, and the claim is about one model.
* ``rank_agreement``: Spearman's ρ and Kendall's τ between two models' per-format accuracies, with a
  paired bootstrap over items (both models' matrices resampled with the same items); ``reliability``: the
  split-half reliability of one model's format ranking (Spearman-Brown corrected), the ceiling an observed
  correlation is read against.
* ``thompson_search``: FormatSpread's search for the best (or worst) format under a budget of item
  evaluations (Beta-Bernoulli Thompson sampling), replayed on the exhaustive matrix: evaluating an item in
  a format returns exactly what the exhaustive run computed, so the search's choice can be compared with
  the exhaustive answer.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from heredity.reports.stats import fmt_ci, fmt_num, fmt_p, holm_family, mean_ci, rate_ci, verdict


def _resample(tasks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of a bootstrap sample drawn within each task (each task keeps its item count)."""
    return np.concatenate(
        [rng.choice(np.flatnonzero(tasks == t), (tasks == t).sum()) for t in np.unique(tasks)]
    )


def spread(matrix: np.ndarray, tasks: np.ndarray, boot: int = 2000, perms: int = 2000, seed: int = 0) -> dict:
    """Per-format accuracy's max − min: estimate, 95% percentile bootstrap interval over items, and the
    within-item permutation p-value of "every format has the same accuracy" (two-sided by construction:
    the spread is never negative)."""
    m = np.asarray(matrix, float)
    rng = np.random.default_rng(seed)
    acc = m.mean(0)
    est = float(acc.max() - acc.min())
    boots = [float(np.ptp(m[_resample(tasks, rng)].mean(0))) for _ in range(boot)]
    null = [float(np.ptp(rng.permuted(m, axis=1).mean(0))) for _ in range(perms)]
    p = (1 + sum(v >= est - 1e-12 for v in null)) / (perms + 1)
    return {
        "spread": est,
        "lo": float(np.percentile(boots, 2.5)),
        "hi": float(np.percentile(boots, 97.5)),
        "null_mean": float(np.mean(null)),
        "p": float(p),
        "best": int(acc.argmax()),
        "worst": int(acc.argmin()),
        "n": int(m.shape[0]),
        "unit": "items",
    }


def _corr(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan")  # a constant ranking has no order to agree with
    return float(sps.spearmanr(a, b).statistic), float(sps.kendalltau(a, b).statistic)


def rank_agreement(a: np.ndarray, b: np.ndarray, tasks: np.ndarray, boot: int = 2000, seed: int = 0) -> dict:
    """Spearman ρ and Kendall τ between the per-format accuracies of two models scored on the same items,
    each with a 95% percentile interval from a paired bootstrap over items (unit: items)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    rho, tau = _corr(a.mean(0), b.mean(0))
    draws = []
    for _ in range(boot):
        rows = _resample(tasks, rng)
        draws.append(_corr(a[rows].mean(0), b[rows].mean(0)))
    d = np.array(draws)
    out = {"n": int(a.shape[0]), "unit": "items"}
    for i, name in enumerate(("spearman", "kendall")):
        ok = d[:, i][~np.isnan(d[:, i])]
        est = (rho, tau)[i]
        lo, hi = np.percentile(ok, [2.5, 97.5]) if len(ok) else (np.nan, np.nan)
        out[name] = {
            "estimate": est,
            "lo": float(lo),
            "hi": float(hi),
            "undefined_draws": int(boot - len(ok)),
        }
    return out


def correlation_difference(
    parent: np.ndarray,
    child: np.ndarray,
    other: np.ndarray,
    tasks: np.ndarray,
    boot: int = 2000,
    seed: int = 0,
) -> dict:
    """ρ(parent, child) − ρ(parent, other) (Spearman over formats), a paired bootstrap over items for its 95%
    interval and its two-sided p (twice the smaller tail share of draws beyond 0; unit: items)."""
    parent, child, other = (np.asarray(x, float) for x in (parent, child, other))
    rng = np.random.default_rng(seed)

    def diff(rows):
        p = parent[rows].mean(0)
        return _corr(p, child[rows].mean(0))[0] - _corr(p, other[rows].mean(0))[0]

    est = diff(np.arange(parent.shape[0]))
    d = np.array([diff(_resample(tasks, rng)) for _ in range(boot)])
    d = d[~np.isnan(d)]
    if not len(d) or np.isnan(est):
        return {
            "diff": est,
            "lo": float("nan"),
            "hi": float("nan"),
            "p": float("nan"),
            "n": int(parent.shape[0]),
            "unit": "items",
        }
    p = min(1.0, 2 * (1 + min((d <= 0).sum(), (d >= 0).sum())) / (len(d) + 1))
    return {
        "diff": float(est),
        "lo": float(np.percentile(d, 2.5)),
        "hi": float(np.percentile(d, 97.5)),
        "p": float(p),
        "n": int(parent.shape[0]),
        "unit": "items",
    }


def _halves(tasks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random half of the items (half of each task's), as a boolean mask."""
    half = np.zeros(len(tasks), bool)
    for t in np.unique(tasks):
        idx = rng.permutation(np.flatnonzero(tasks == t))
        half[idx[: len(idx) // 2]] = True
    return half


def cross_half(a: np.ndarray, b: np.ndarray, tasks: np.ndarray, splits: int = 500, seed: int = 0) -> float:
    """Spearman ρ between ``a``'s per-format accuracies on one half of the items and ``b``'s on the other
    half, averaged over random splits (and both directions): agreement on formats that shares no item, so
    no item's quirk counts as agreement. With ``b`` = ``a`` it is ``a``'s own split-half ρ (the ceiling)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(splits):
        h = _halves(tasks, rng)
        for x, y in ((h, ~h), (~h, h)):
            r = _corr(a[x].mean(0), b[y].mean(0))[0]
            if not np.isnan(r):
                rs.append(r)
    return float(np.mean(rs)) if rs else float("nan")


def reliability(matrix: np.ndarray, tasks: np.ndarray, splits: int = 500, seed: int = 0) -> float:
    """Split-half reliability of a model's format ranking: its ``cross_half`` ρ with itself, Spearman-Brown
    corrected to the full set of items."""
    r = cross_half(matrix, matrix, tasks, splits, seed)
    return 2 * r / (1 + r) if r > -1 else float("nan")


def thompson_search(matrix: np.ndarray, budget: int, find: str = "best", seed: int = 0) -> dict:
    """Thompson sampling over formats (Beta(1, 1) priors; each pull evaluates one not-yet-seen item, in a
    random order, in the chosen format) for ``budget`` evaluations; returns the chosen format (highest, or for
    ``worst`` lowest, posterior mean) and the evaluations spent on each."""
    m = np.asarray(matrix, float)
    rng = np.random.default_rng(seed)
    n_items, n_formats = m.shape
    order = [rng.permutation(n_items) for _ in range(n_formats)]
    wins, pulls = np.zeros(n_formats), np.zeros(n_formats, int)
    sign = 1 if find == "best" else -1
    for _ in range(min(budget, m.size)):
        draw = rng.beta(1 + wins, 1 + pulls - wins)
        draw[pulls >= n_items] = -np.inf if sign == 1 else np.inf  # a format whose items are all seen
        f = int(np.argmax(draw) if sign == 1 else np.argmin(draw))
        wins[f] += m[order[f][pulls[f]], f]
        pulls[f] += 1
    mean = (1 + wins) / (2 + pulls)
    return {"chosen": int(np.argmax(mean) if sign == 1 else np.argmin(mean)), "pulls": pulls.tolist()}


def search_vs_exhaustive(matrix: np.ndarray, budget: int, runs: int = 200, seed: int = 0) -> dict:
    """Thompson sampling's best and worst formats at ``budget`` evaluations against the exhaustive answer,
    over ``runs`` random item orders: how often it finds the exhaustive best (worst), and the accuracy it
    gives up (regret, in accuracy points of the exhaustive matrix); beside it, uniform allocation of the same
    budget (every format the same number of random items)."""
    m = np.asarray(matrix, float)
    acc = m.mean(0)
    rng = np.random.default_rng(seed)
    out = {"budget": budget, "exhaustive": int(m.size), "runs": runs}
    for find in ("best", "worst"):
        target = acc.max() if find == "best" else acc.min()
        ts, uni = [], []
        for r in range(runs):
            ts.append(acc[thompson_search(m, budget, find, seed=seed * 10_007 + r)["chosen"]])
            k = max(1, budget // m.shape[1])
            means = np.array(
                [
                    m[rng.choice(m.shape[0], min(k, m.shape[0]), replace=False), f].mean()
                    for f in range(m.shape[1])
                ]
            )
            uni.append(acc[int(means.argmax() if find == "best" else means.argmin())])
        ts, uni = np.array(ts), np.array(uni)
        out[find] = {
            "exhaustive": float(target),
            "thompson_found": float(np.mean(np.isclose(ts, target))),
            "thompson_regret": float(np.median(np.abs(target - ts))),
            "uniform_found": float(np.mean(np.isclose(uni, target))),
            "uniform_regret": float(np.median(np.abs(target - uni))),
        }
    return out


# ---- the report ---------------------------------------------------------------------------------------


def model_labels(config) -> dict[str, list[str]]:
    """The trained models' labels by kind (``lora``, ``full``, ``merge``), one per training seed."""
    names = {"lora": "LoRA child", "full": "full child", "merge": "merge of the children"}
    kinds = [*config.children, *(["merge"] if config.merge else [])]
    return {
        k: [names[k] if config.seeds == 1 else f"{names[k]} (seed {s})" for s in range(config.seeds)]
        for k in kinds
    }


def family(config) -> list[str]:
    """Every test the config makes, in one Holm family: each model's spread, and per trained model
    ρ(parent, it) − ρ(parent, unrelated)."""
    trained = [label for labels in model_labels(config).values() for label in labels]
    return [f"spread of {m}" for m in ["parent", *trained]] + [
        f"ρ(parent, {m}) − ρ(parent, unrelated)" for m in trained
    ]


def matrix(rows: list[dict], n_formats: int) -> tuple[np.ndarray, np.ndarray]:
    """(items × formats correctness, each row's task) from a model's ``format-scores`` rows."""
    keys = sorted({(r["task"], r["item"]) for r in rows})
    at = {k: i for i, k in enumerate(keys)}
    m = np.zeros((len(keys), n_formats))
    for r in rows:
        m[at[(r["task"], r["item"])], r["format"]] = r["correct"]
    return m, np.array([t for t, _ in keys])


def analyse(config, formats, templates, items, scores: dict, published: dict) -> dict:
    """The report: per-model accuracy per format and spread, rank agreement with the parent, the declared
    tests with Holm-adjusted p, Thompson sampling vs exhaustive, and the outcome line."""
    mats = {label: matrix(rows, len(formats)) for label, rows in scores.items()}
    tasks = mats["parent"][1]
    per_format = {
        label: [{**rate_ci(int(m[:, f].sum()), len(m)), "unit": "items"} for f in range(len(formats))]
        for label, (m, _) in mats.items()
    }
    spreads = {
        label: spread(m, tasks, config.boot, config.boot, config.seed) for label, (m, _) in mats.items()
    }
    parent = mats["parent"][0]
    agreement = {
        label: rank_agreement(parent, m, tasks, config.boot, config.seed)
        for label, (m, _) in mats.items()
        if label != "parent"
    }
    trained = [label for labels in model_labels(config).values() for label in labels]
    diffs = {
        label: correlation_difference(
            parent, mats[label][0], mats["unrelated"][0], tasks, config.boot, config.seed
        )
        for label in trained
    }
    pvals = {f"spread of {m}": spreads[m]["p"] for m in ["parent", *trained]}
    pvals |= {f"ρ(parent, {m}) − ρ(parent, unrelated)": diffs[m]["p"] for m in trained}
    adjusted = holm_family(pvals, config.holm_family)
    tests = [{"name": k, "p": pvals[k], "holm_p": adjusted[k]} for k in config.holm_family]
    budget = max(1, int(round(config.budget_share * parent.size)))
    return {
        "config": config.model_dump(),
        "formats": [
            {"index": i, "template": t, "describe": f.describe()}
            for i, (f, t) in enumerate(zip(formats, templates, strict=True))
        ],
        "items": {t: int((tasks == t).sum()) for t in np.unique(tasks)},
        "accuracy": per_format,
        "task_accuracy": {
            label: {
                t: [float(m[tasks == t, f].mean()) for f in range(len(formats))] for t in np.unique(tasks)
            }
            for label, (m, _) in mats.items()
        },
        "spread": spreads,
        "reliability": reliability(parent, tasks, seed=config.seed),
        "split_half": cross_half(parent, parent, tasks, seed=config.seed),
        "cross_half": {
            label: cross_half(parent, m, tasks, seed=config.seed)
            for label, (m, _) in mats.items()
            if label != "parent"
        },
        "agreement": agreement,
        "inheritance": diffs,
        "across_seeds": _across_seeds(config, agreement),
        "tests": tests,
        "search": search_vs_exhaustive(parent, budget, seed=config.seed),
        "published": published,
        "outcome": outcome(tests, spreads, diffs, agreement),
    }


def _across_seeds(config, agreement: dict) -> dict:
    """With two or more training seeds: each child kind's ρ(parent, child) over seeds (t, unit: seeds)."""
    if config.seeds < 2:
        return {}
    return {
        kind: {
            **mean_ci([agreement[label]["spearman"]["estimate"] for label in labels], bounds=(-1, 1)),
            "unit": "training seeds",
        }
        for kind, labels in model_labels(config).items()
    }


def outcome(tests: list[dict], spreads: dict, diffs: dict, agreement: dict) -> str:
    """One clause per declared test, as its Holm-adjusted p reads (unit: items; about these models)."""
    parts = []
    for t in tests:
        sig = t["holm_p"] < 0.05
        if t["name"].startswith("spread of "):
            m = t["name"][len("spread of ") :]
            s = spreads[m]
            parts.append(
                f"{m}: spread {fmt_ci({'mean': s['spread'], 'lo': s['lo'], 'hi': s['hi']})} (null mean "
                f"{s['null_mean']:.3f}), Holm {fmt_p(t['holm_p'])}, unit: items (n = {s['n']}) — "
                + (
                    "its formats differ"
                    if sig
                    else "no format difference detected beyond item noise (a null)"
                )
            )
        else:
            m = t["name"].split(", ", 1)[1].split(")", 1)[0]
            d, rho = diffs[m], agreement[m]["spearman"]
            v = verdict({**d, "direction": "higher" if d["diff"] > 0 else "lower"}, expected=1, p=t["holm_p"])
            parts.append(
                f"ρ(parent, {m}) = {fmt_num(rho['estimate'], 2)}; minus ρ(parent, unrelated): "
                f"{fmt_ci({'mean': d['diff'], 'lo': d['lo'], 'hi': d['hi']}, 2)}, Holm {fmt_p(t['holm_p'])}, "
                f"unit: items (n = {d['n']}) — {v['words']}"
            )
    return "; ".join(parts)
