"""The statistics of data-quality: the declared Holm family, per-arm rates with their intervals, the family's
tests, the judge's win rates (raw and length-controlled) and the inheritance measures. Everything the report
card shows is computed here; ``data_quality_render`` only formats it.

Units, said beside every figure: with ≥ 2 training seeds per arm a rate is a mean over seeds (Student t
interval) and a contrast a Welch t over seeds (a claim about the selection rule); with one seed a rate is over
items (Wilson) and a contrast McNemar's exact test over the same items (a claim about these two trained
models). Win rates, length drift and taste are descriptive: percentile bootstrap over items, each item's
seeds resampled together.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from heredity.evals.diversity import distinct_n
from heredity.reports.stats import (
    NAN,
    holm_alpha,
    holm_family,
    mean_ci,
    min_detectable,
    min_detectable_welch,
    paired_rate_test,
    rate_ci,
    verdict,
    welch_test,
)

SEEDS_UNIT = "training seeds"
ITEMS_UNIT = "held-out items, one trained model per arm"
MEASURES = ("success", "exact", "strict", "loose")


def family(config) -> list[str]:
    """Every test the design makes, per base: each rule against random at the same N, and verified N against
    noisy 3N (the quality-vs-quantity contrast)."""
    names = []
    for b in config.bases:
        for n in b.sizes:
            names += [f"{b.label}: {rule}@{n} vs random@{n}" for rule in b.rules if rule != "random"]
        names += [f"{b.label}: verified@{n} vs noisy@{3 * n}" for n in b.noisy_sizes]
    return names


def _outcomes(ev: dict, measure: str) -> list[int]:
    """0/1 per item of one evaluated model: success = exact on graded items and strict on constraint items."""
    if measure == "success":
        return [
            int(bool(c if c is not None else s)) for c, s in zip(ev["correct"], ev["strict"], strict=True)
        ]
    key = "correct" if measure == "exact" else measure
    return [int(bool(x)) for x in ev[key] if x is not None]


def _words(text: str) -> int:
    return len(text.split())


def distinct2(answers: list[str]) -> float:
    """Distinct bigrams over all bigrams of a set of answers (whitespace words, ``evals.diversity``):
    vocabulary diversity; undetermined (NaN) when no answer has two words."""
    words = [a.split() for a in answers]
    return distinct_n(words, 2) if any(len(w) > 1 for w in words) else NAN


def rate_summary(evals: list[dict], measure: str) -> dict:
    """The measure's rate for an arm: over seeds (mean, t interval) with ≥ 2 seeds, else over items
    (Wilson)."""
    per_seed = [_outcomes(e, measure) for e in evals]
    if not per_seed[0]:
        return {"mean": NAN, "lo": NAN, "hi": NAN, "n": 0, "unit": "no items"}
    if len(evals) == 1:
        o = per_seed[0]
        ci = rate_ci(sum(o), len(o))
        return {"mean": ci["mean"], "lo": ci["lo"], "hi": ci["hi"], "n": len(o), "unit": "items (Wilson)"}
    rates = [sum(o) / len(o) for o in per_seed]
    ci = mean_ci(rates, bounds=(0.0, 1.0), allow_binary=True)  # per-seed rates, not 0/1 outcomes
    return {
        **{k: ci[k] for k in ("mean", "lo", "hi")},
        "n": len(rates),
        "unit": SEEDS_UNIT,
        "per_seed": rates,
    }


def contrast(a: list[dict], b: list[dict]) -> dict:
    """Arm a against arm b on the held-out success rate (see the module docstring for the test and unit)."""
    if len(a) >= 2 and len(b) >= 2:
        ra = [np.mean(_outcomes(e, "success")) for e in a]
        rb = [np.mean(_outcomes(e, "success")) for e in b]
        t = welch_test(ra, rb, SEEDS_UNIT)
        t["sd"] = [float(np.std(ra, ddof=1)), float(np.std(rb, ddof=1))]
        return t
    return paired_rate_test(_outcomes(a[0], "success"), _outcomes(b[0], "success"), ITEMS_UNIT)


def _mde(t: dict, m: int) -> float:
    if t["unit"] == SEEDS_UNIT:
        (na, nb), (sa, sb) = t["n"], t["sd"]
        return min_detectable_welch(sa, na, sb, nb, family=m)
    n = t["n"]
    d = t["discordant"]
    if not n:
        return NAN
    # per-item paired differences are +1 (a10 items), −1 (a01) and 0: their sd
    mean = (d[0] - d[1]) / n
    sd = math.sqrt(max((d[0] + d[1]) / n - mean**2, 0.0) * n / max(n - 1, 1))
    # no discordant item: the differences' spread is unknown (not zero), so no smallest effect can be given
    return min_detectable(sd, n, family=m) if sd > 0 else NAN


def _pair(test_name: str) -> tuple[str, str, str]:
    base, rest = test_name.split(": ", 1)
    a, b = rest.split(" vs ")
    return base, a, b


def tests(config, results: dict) -> list[dict]:
    """The declared family's tests, Holm-adjusted over the whole family, each with its verdict and, for a
    null, the smallest effect it could have detected at the level its verdict uses."""
    fam = config.holm_family
    out = []
    for name in fam:
        base, a, b = _pair(name)
        arms = results[base]["arms"]
        out.append({"name": name, "a": a, "b": b, "base": base, **contrast(arms[a], arms[b])})
    adj = holm_family({t["name"]: t["p"] for t in out}, fam)
    for t in out:
        t["p_holm"] = adj[t["name"]]
        t["verdict"] = verdict(t, expected=0, p=t["p_holm"])
        t["alpha_used"] = holm_alpha(len(fam))
        t["min_detectable"] = _mde(t, len(fam)) if t["verdict"]["result"] == "null" else None
    return out


# ---- judge win rates and inheritance (descriptive, bootstrap over items) ---------------------------------


def _lc_win(dlen: np.ndarray, win: np.ndarray, scale: float) -> float:
    """Length-controlled win rate: the logistic fit of the decided wins on tanh(Δlength / scale), read at
    Δlength = 0 (AlpacaEval 2's idea with one length term)."""
    if len(win) == 0:
        return NAN
    if win.min() == win.max():
        return float(win[0])
    from sklearn.linear_model import LogisticRegression

    x = np.tanh(dlen / scale).reshape(-1, 1) if scale > 0 else np.zeros((len(win), 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = LogisticRegression(penalty=None, max_iter=500).fit(x, win.astype(int))
    return float(1 / (1 + math.exp(-fit.intercept_[0])))


def judge_and_inheritance(arm: list[dict], ref: list[dict], boot: int, seed: int) -> dict:
    """Arm against the random arm at the same N (seeds paired by index, items by position): the judge RM's
    win rate (ties count half) and length-controlled win rate, the answer-length drift (words), the
    distinct-bigram drift, and the selection RM's taste: its standardized score gain minus the judge's."""
    k = min(len(arm), len(ref))
    arm, ref = arm[:k], ref[:k]
    n_items = len(arm[0]["answers"])

    def per_item(key):
        a = np.array([e[key] for e in arm], float)  # seeds × items
        r = np.array([e[key] for e in ref], float)
        return a, r

    ja, jr = per_item("judge_reward")
    sa, sr = per_item("selection_reward")
    la = np.array([[_words(x) for x in e["answers"]] for e in arm], float)
    lr = np.array([[_words(x) for x in e["answers"]] for e in ref], float)
    win = np.where(ja > jr, 1.0, np.where(ja < jr, 0.0, 0.5))
    dlen = la - lr
    scale = float(np.std(dlen)) or 1.0
    sd_sel, sd_judge = float(np.std(sr)) or 1.0, float(np.std(jr)) or 1.0

    def stats(idx):
        w, d = win[:, idx], dlen[:, idx]
        decided = w != 0.5
        return {
            "win_rate": float(w.mean()),
            "lc_win_rate": _lc_win(d[decided], w[decided], scale),
            "length_drift": float(d.mean()),
            "taste": float(
                (sa[:, idx] - sr[:, idx]).mean() / sd_sel - (ja[:, idx] - jr[:, idx]).mean() / sd_judge
            ),
        }

    point = stats(np.arange(n_items))
    rng = np.random.default_rng(seed)
    draws = [stats(rng.integers(0, n_items, n_items)) for _ in range(boot)]
    out = {}
    for key, value in point.items():
        xs = np.array([d[key] for d in draws], float)
        xs = xs[np.isfinite(xs)]
        lo, hi = np.percentile(xs, [2.5, 97.5]) if len(xs) else (NAN, NAN)
        out[key] = {"mean": value, "lo": float(lo), "hi": float(hi)}
    out["distinct2"] = float(np.mean([distinct2(e["answers"]) for e in arm]))
    out["distinct2_random"] = float(np.mean([distinct2(e["answers"]) for e in ref]))
    out["unit"] = "held-out items (percentile bootstrap; an item's seeds resampled together)"
    out["seeds"] = k
    return out


def analyse(config, results: dict, eval_rows: list[dict], pool_rows: list[dict], rm_metrics: dict) -> dict:
    """The report (less lineage, pool profile and timing, which ``run`` adds)."""
    table: dict[str, dict] = {}
    judges: dict[str, dict] = {}
    for bi, b in enumerate(config.bases):
        res = results[b.label]
        rows = {"base (no fine-tune)": _arm_row([res["base"]])}
        for label, evals in res["arms"].items():
            rows[label] = {**_arm_row(evals), "selected": evals[0]["selected"]}
        table[b.label] = rows
        judges[b.label] = {}
        for label, evals in res["arms"].items():
            rule, _, n = label.partition("@")
            if rule in ("random", "all", "noisy") or f"random@{n}" not in res["arms"]:
                continue
            judges[b.label][label] = judge_and_inheritance(
                evals, res["arms"][f"random@{n}"], config.boot, config.seed + bi
            )
    ts = tests(config, results)
    return {
        "config": config.model_dump(),
        "eval": {
            "graded": sum(r["reference"] is not None for r in eval_rows),
            "constraints": sum(r["constraints"] is not None for r in eval_rows),
            "held_out_pairs": sum(bool(r["held_out_pair"]) for r in eval_rows),
        },
        "reward_models": rm_metrics,
        "arms": table,
        "judge": judges,
        "tests": ts,
        "outcome": outcome(config, table, ts),
    }


def _arm_row(evals: list[dict]) -> dict:
    row = {m: rate_summary(evals, m) for m in MEASURES}
    row["words"] = float(np.mean([np.mean([_words(a) for a in e["answers"]]) for e in evals]))
    row["distinct2"] = float(np.mean([distinct2(e["answers"]) for e in evals]))
    row["seeds"] = len(evals)
    return row


def outcome(config, table: dict, ts: list[dict]) -> str:
    """One line, no larger than the tests: which contrasts the family found, in which direction, and the
    unit of each."""
    parts = []
    for b in config.bases:
        mine = [t for t in ts if t["base"] == b.label]
        if not mine:
            continue
        sig = [t for t in mine if t["verdict"]["significant"]]
        undetermined = sum(t["verdict"]["result"] == "undetermined" for t in mine)
        unit = mine[0]["unit"]
        und = f", {undetermined} undetermined (no variance)" if undetermined else ""
        if sig:
            said = "; ".join(
                f"{t['a']} {'above' if t['diff'] > 0 else 'below'} {t['b']} by {abs(t['diff']):.3f} "
                f"(Holm p = {t['p_holm']:.3g})"
                for t in sig
            )
            parts.append(
                f"{b.label}: {len(sig)} of {len(mine)} declared contrasts differ on held-out success{und} — "
                f"{said} (unit: {unit})"
            )
        else:
            parts.append(
                f"{b.label}: none of {len(mine)} declared contrasts differs on held-out success after Holm"
                f"{und} (unit: {unit}) — a null at this design's power, not a finding that selection does "
                "not matter"
            )
    return "; ".join(parts) + "."
