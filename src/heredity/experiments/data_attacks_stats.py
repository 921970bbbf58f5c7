"""The statistics of ``data-attacks``: intervals over training seeds, the planned contrasts and their tests.

Unit of replication: the training seed for every interval (a t interval over the seeds' values, clipped to the
quantity's range; a rate equal on every seed gets each seed's Wilson interval over its own test images, the
widest). The planned contrasts (``planned``) are declared from the config alone, in two Holm families, one per
unit: claims about training (``TRAINING``: paired t over seeds, or the exact sign test where every seed's
difference is the same) and claims about the trained models (``MODELS``: McNemar per model, the largest p).

This module also holds the names the experiment, its statistics and its rendering share (the Holm families,
the uncertainty arms), so that ``data_attacks`` and ``data_attacks_render`` both import them without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from heredity.experiments.data_attacks import Config

NUM_CLASSES = 10
DETECTORS = ("activation_clustering", "spectral_signature")
OOD_SETS = ("other digits", "uniform noise")  # what the uncertainty step scores out of distribution
DROPOUT_ONE_PASS = "dropout model, one pass"
TRAINING, MODELS = "training (unit: training seeds)", "trained models (unit: test images, per model)"


# ---- intervals over training seeds --------------------------------------------------------------


def seed_rate(k: list[int], n: list[int]) -> dict:
    """Mean over seeds of per-seed rates with a t interval over the seeds (unit: training seeds), clipped to
    [0, 1]. When every seed has the same rate there is no spread for a t interval: each seed's Wilson interval
    over its own test items (each item counted once, never the same item under every seed as independent
    items), and the widest of them, marked ``wilson``."""
    from heredity.reports.stats import mean_ci, rate_ci

    rates = [a / b for a, b in zip(k, n, strict=True)]
    ci = mean_ci(rates, bounds=(0.0, 1.0), allow_binary=True)
    if not (ci["lo"] == ci["lo"]):  # NaN: no variance over seeds
        ws = [rate_ci(a, b) for a, b in zip(k, n, strict=True)]
        ci = {
            **ci,
            "lo": min(w["lo"] for w in ws),
            "hi": max(w["hi"] for w in ws),
            "method": f"wilson over the {max(n)} test items of each seed, each item counted once (every seed "
            "scored the same rate; the widest seed's interval)",
        }
    return {
        **ci,
        "per_seed": rates,
        "k": [int(v) for v in k],
        "of": [int(v) for v in n],
        "unit": f"training seeds, n = {len(rates)}",
    }


def seed_mean(values: list[float], bounds: tuple[float, float] | None = (0.0, 1.0)) -> dict:
    """Mean with a t interval over seeds, clipped to the quantity's range (a rate, an AUROC: [0, 1])."""
    from heredity.reports.stats import mean_ci

    return {
        **mean_ci(values, bounds=bounds, allow_binary=True),
        "per_seed": [float(v) for v in values],
        "unit": f"training seeds, n = {len(values)}",
    }


# ---- tests of a contrast ------------------------------------------------------------------------


def sign_test_p(diffs: list[float]) -> float:
    """Two-sided exact sign test of a zero median difference over matched seeds (zero differences dropped;
    none left: p = 1). With n seeds its smallest p is 2 / 2^n (0.0625 at n = 5)."""
    from scipy import stats

    pos, neg = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return float(stats.binomtest(pos, pos + neg, 0.5).pvalue) if pos + neg else 1.0


def seed_contrast(a: dict, b: dict, unit: str) -> dict:
    """Two arms scored per seed (``seed_rate`` / ``seed_mean`` dicts, matched by seed): a claim about
    training, with the training seed as the unit. A paired t test over the seeds, its interval clipped to a
    difference's range [−1, 1] (a rate or an AUROC minus another). Where every seed's difference is the same
    (every seed 100% against every seed 0%), a t test is undefined: the exact sign test over the seeds (at
    n = 5 its p is never below 0.0625), with, for rates, the widest of the seeds' Newcombe intervals over
    their own test items (each item counted once per seed)."""
    from heredity.reports.stats import paired_test, rate_diff_test

    t = paired_test(a["per_seed"], b["per_seed"], unit)
    if t["lo"] == t["lo"]:
        t["lo"], t["hi"] = max(-1.0, t["lo"]), min(1.0, t["hi"])
    if t["p"] == t["p"]:
        return {**t, "interval": "t over seeds, clipped to [−1, 1]"}
    diffs = [x - y for x, y in zip(a["per_seed"], b["per_seed"], strict=True)]
    lo = hi = float("nan")
    if "k" in a and "k" in b:
        per = [
            rate_diff_test(ka, na, kb, nb, unit)
            for ka, na, kb, nb in zip(a["k"], a["of"], b["k"], b["of"], strict=True)
        ]
        lo, hi = max(-1.0, min(x["lo"] for x in per)), min(1.0, max(x["hi"] for x in per))
    return {
        **t,
        "test": "exact sign test over seeds (every seed's difference the same: no t test); interval: "
        "Newcombe over each seed's test images, the widest",
        "lo": lo,
        "hi": hi,
        "p": sign_test_p(diffs),
        "interval": "Newcombe per seed, the widest",
    }


def paired_table(a: np.ndarray, b: np.ndarray) -> list[int]:
    """[both, a only, b only, neither] of two 0/1 outcome vectors over the same items."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return [int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum())]


def outcomes(table: list[int]) -> tuple[list[int], list[int]]:
    """The paired 0/1 outcomes behind a 2×2 table [both, a only, b only, neither]."""
    a11, a10, a01, a00 = table
    return [1] * (a11 + a10) + [0] * (a01 + a00), [1] * a11 + [0] * a10 + [1] * a01 + [0] * a00


def every_model(tables: list[list[int]], unit: str) -> dict:
    """A claim about the trained models (not about training): each seed's model against its twin on the same
    items (McNemar's exact test, Newcombe's paired interval), one test per model, never pooling the same item
    under several models. The p is the largest of the models' (an intersection–union test: significant means
    every model shows the effect, whatever the dependence between them); the difference and interval are that
    model's."""
    from heredity.reports.stats import paired_rate_test

    per = [paired_rate_test(*outcomes(t), unit) for t in tables]
    worst = max(range(len(per)), key=lambda i: (per[i]["p"], -abs(per[i]["diff"])))
    w = per[worst]
    return {
        **w,
        "test": f"McNemar exact, each of {len(per)} models; p: the largest (every model)",
        "models": len(per),
        "weakest": worst,
        "per_model": [{k: x[k] for k in ("diff", "lo", "hi", "p", "discordant")} for x in per],
    }


# ---- the planned contrasts (declared from the config before the run) ----------------------------


def planned(config: Config) -> list[dict]:
    """The planned contrasts and their Holm families, from the config alone (fixed before any model is
    trained; the report tests exactly these, a test checks it). Two families, one per unit:

    * ``TRAINING`` — claims about a training method, the training seed (or an ensemble of seeds) as the
      unit;
    * ``MODELS`` — claims about the trained models themselves, the test image as the unit, each model on its
      own.
    """
    return (
        _trigger_contrasts(config)
        + _width_contrasts(config)
        + _flip_contrasts(config)
        + _adversarial_contrasts(config)
        + _transfer_contrasts(config)
        + _ood_contrasts(config)
        + _model_contrasts(config)
    )


def _trigger_contrasts(config: Config) -> list[dict]:
    """Attack success with each trigger count against none, at every width (needs count 0 on the grid)."""
    cs, ws = config.counts, config.widths
    if 0 not in cs:
        return []
    return [
        {
            "id": f"trigger/w{w}/c{c}",
            "family": TRAINING,
            "kind": "trigger",
            "width": w,
            "count": c,
            "what": f"attack success, {c} triggered rows vs none (width {w})",
        }
        for w in ws
        for c in cs
        if c > 0
    ]


def _width_contrasts(config: Config) -> list[dict]:
    """Does the count a trigger needs grow with width? The smallest count, every width against the narrowest
    (larger counts saturate on the quick grid)."""
    cs, ws = config.counts, config.widths
    nonzero = [c for c in cs if c > 0]
    if not (nonzero and len(ws) > 1):
        return []
    c = min(nonzero)
    return [
        {
            "id": f"width/c{c}/w{w}",
            "family": TRAINING,
            "kind": "width",
            "width": w,
            "base": ws[0],
            "count": c,
            "what": f"attack success with {c} triggered rows: width {w} vs width {ws[0]}",
        }
        for w in ws[1:]
    ]


def _flip_contrasts(config: Config) -> list[dict]:
    """Clean accuracy at each flip rate against the first rate of the grid."""
    return [
        {
            "id": f"flip/{r}",
            "family": TRAINING,
            "kind": "flip",
            "rate": r,
            "what": f"clean accuracy, {r:.0%} labels flipped vs {config.flip_rates[0]:.0%}",
        }
        for r in config.flip_rates[1:]
    ]


def _adversarial_contrasts(config: Config) -> list[dict]:
    """Accuracy under each attack of the FGSM- and PGD-trained models against the standard one, at the
    training ε (the largest ε of the sweep when the training ε is not on it)."""
    e = config.train_eps if config.train_eps in config.eps else config.eps[-1]
    return [
        {
            "id": f"adversarial/{kind}/{attack}",
            "family": TRAINING,
            "kind": "adversarial",
            "model": kind,
            "attack": attack,
            "eps": e,
            "what": f"accuracy under {attack.upper()} at ε = {e}: {kind} vs standard",
        }
        for kind in ("fgsm-trained", "pgd-trained")
        for attack in ("fgsm", "pgd")
    ]


def _transfer_contrasts(config: Config) -> list[dict]:
    """At every ε > 0: the error of B (A's initialization) against C (another) on A's PGD examples."""
    return [
        {
            "id": f"transfer/{e}",
            "family": TRAINING,
            "kind": "transfer",
            "eps": e,
            "what": f"transfer of A's PGD examples (ε = {e}): error of B (A's init) vs C (another init)",
        }
        for e in config.eps
        if e > 0
    ]


def _ood_contrasts(config: Config) -> list[dict]:
    """Per out-of-distribution set, each uncertainty arm against the arm it differs from in one thing."""
    rows: list[dict] = []
    for s in OOD_SETS:
        rows += [
            {
                "id": f"ood/{s}/ensemble",
                "family": TRAINING,
                "kind": "ensemble",
                "set": s,
                "what": f"AUROC vs {s}: ensemble vs its own {config.ensemble_size} members (max softmax, "
                "mean)",
            },
            {
                "id": f"ood/{s}/mc",
                "family": TRAINING,
                "kind": "mc",
                "set": s,
                "what": f"AUROC vs {s}: MC dropout vs the same dropout models in one pass (inference only)",
            },
            {
                "id": f"ood/{s}/dropout",
                "family": TRAINING,
                "kind": "dropout",
                "set": s,
                "what": f"AUROC vs {s}: dropout models in one pass vs max softmax (training only)",
            },
            {
                "id": f"ood/{s}/temperature",
                "family": TRAINING,
                "kind": "temperature",
                "set": s,
                "what": f"AUROC vs {s}: temperature scaling vs max softmax (the same models)",
            },
        ]
    return rows


def _model_contrasts(config: Config) -> list[dict]:
    """The ``MODELS`` family: every trigger-poisoned model against its unpoisoned twin, image by image."""
    cs, ws = config.counts, config.widths
    if 0 not in cs:
        return []
    return [
        {
            "id": f"models/w{w}/c{c}",
            "family": MODELS,
            "kind": "models",
            "width": w,
            "count": c,
            "what": f"attack success, {c} triggered rows vs none (width {w}): every trained model "
            "against its unpoisoned twin",
        }
        for w in ws
        for c in cs
        if c > 0
    ]


def families(config: Config) -> dict[str, list[str]]:
    """Each Holm family's contrasts (ids), declared before the run."""
    out: dict[str, list[str]] = {}
    for r in planned(config):
        out.setdefault(r["family"], []).append(r["id"])
    return out


# ---- testing the planned contrasts --------------------------------------------------------------


def compare(report: dict, config: Config) -> list[dict]:
    """Exactly the planned contrasts (``planned``), each tested at its unit, Holm within each declared family;
    a null's smallest detectable effect at the level its verdict uses (α over the family, t quantiles)."""
    rows = [
        {"id": d["id"], "what": d["what"], "family": d["family"], "test": _contrast_test(d, report, config)}
        for d in planned(config)
    ]
    _holm_within_families(rows, config)
    return rows


def _contrast_test(d: dict, report: dict, config: Config) -> dict:
    """The test of one planned contrast ``d`` on the report's per-seed (or per-model) scores."""
    P, A, U = report["poisoning"], report["adversarial"], report["uncertainty"]
    bad = {(b["width"], b["count"]): b for b in P["badnets"]}
    flips = {f["rate"]: f for f in P["flips"]}
    n = A["n"]
    seeds = "training seeds (same initializations and data order)"
    k = d["kind"]
    if k == "trigger":
        return seed_contrast(
            bad[(d["width"], d["count"])]["attack_success"], bad[(d["width"], 0)]["attack_success"], seeds
        )
    if k == "width":
        return seed_contrast(
            bad[(d["width"], d["count"])]["attack_success"],
            bad[(d["base"], d["count"])]["attack_success"],
            "training seeds (paired by index: same data order and poisoned rows, another width)",
        )
    if k == "flip":
        return seed_contrast(
            flips[d["rate"]]["clean_accuracy"], flips[config.flip_rates[0]]["clean_accuracy"], seeds
        )
    if k == "adversarial":
        j = config.eps.index(d["eps"])
        return seed_contrast(
            A["robust"][f"{d['model']}/{d['attack']}"][j],
            A["robust"][f"standard/{d['attack']}"][j],
            "training seeds (same initializations)",
        )
    if k == "transfer":
        m = A["raw_transfer"][str(d["eps"])]
        return seed_contrast(
            seed_rate(m["A"]["B"], [n] * len(m["A"]["B"])),
            seed_rate(m["A"]["C"], [n] * len(m["A"]["C"])),
            "training seeds (one A, B, C triple each)",
        )
    if k == "ensemble":
        o = U["ood"][d["set"]]
        return seed_contrast(
            o["ensemble"]["auroc"],
            {"per_seed": U["members_auroc"][d["set"]]["per_ensemble"]},
            "ensembles (each against the mean of its own members)",
        )
    if k in ("mc", "dropout", "temperature"):
        o = U["ood"][d["set"]]
        a, b = {
            "mc": ("MC dropout", DROPOUT_ONE_PASS),
            "dropout": (DROPOUT_ONE_PASS, "max softmax"),
            "temperature": ("temperature scaling", "max softmax"),
        }[k]
        return seed_contrast(
            o[a]["auroc"],
            o[b]["auroc"],
            "training seeds (the same models)"
            if k != "dropout"
            else "training seeds (paired by index: same data order; another stack of models)",
        )
    if k == "models":
        return every_model(
            bad[(d["width"], d["count"])]["vs_none"],
            f"the {n_trig(report)} triggered test images, each trained model on its own",
        )
    raise ValueError(f"unknown contrast kind {k!r}")


def _holm_within_families(rows: list[dict], config: Config) -> None:
    """Add to each row its Holm-adjusted p within its declared family (``p_holm``), the family's size and, for
    a paired t test, the smallest effect it could have detected at the family's level (``mde``)."""
    from heredity.reports.stats import holm, min_detectable

    for fam, ids in families(config).items():
        mine = [r for r in rows if r["family"] == fam]
        assert [r["id"] for r in mine] == ids, "the report tests exactly the declared family"
        for r, p in zip(mine, holm([r["test"]["p"] for r in mine]), strict=True):
            r["p_holm"] = p
            sd, n_ = r["test"].get("sd"), r["test"]["n"]
            t_test = (
                r["test"]["test"] == "paired t"
                and isinstance(n_, int)
                and n_ >= 2
                and sd is not None
                and sd == sd
            )
            r["mde"] = min_detectable(sd, n_, family=len(ids)) if t_test else None
            r["family_size"] = len(ids)


# ---- reading a report ---------------------------------------------------------------------------


def n_trig(report: dict) -> int:
    """How many triggered test images attack success is scored on (the other classes' test images)."""
    b = report["poisoning"]["badnets"][0]["attack_success"]
    return int(b["of"][0])


def needed_count(report: dict, width: int, level: float = 0.9) -> int | None:
    """The smallest trigger count whose mean attack success reaches ``level`` at ``width`` (None: none
    did)."""
    hits = [
        b["count"]
        for b in report["poisoning"]["badnets"]
        if b["width"] == width and b["attack_success"]["mean"] >= level
    ]
    return min(hits) if hits else None
