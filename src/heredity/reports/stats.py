"""Intervals and tests that experiment reports share (scipy, which scikit-learn already brings).

What this module promises, so that a report built on it survives a hostile reviewer:

* **Rates get exact-coverage intervals.** ``rate_ci`` is a Wilson score interval (or Clopper–Pearson with
  ``method="exact"``): sound at 0/n and n/n, never of zero width. ``mean_ci`` refuses 0/1 data (a t interval
  on Bernoulli outcomes collapses to a point at 0/n and n/n) and says to use ``rate_ci``.
* **Undetermined is said, not hidden.** With n < 2, or no variance at all, an interval or a p-value is NaN and
  prints as "undetermined" — never 0, 1 or a zero-width interval.
* **Tests are two-sided** and return their direction and size: ``paired_test`` / ``welch_test`` (continuous
  values), ``paired_rate_test`` (the same items scored 0/1 for two models: exact McNemar with Newcombe's
  interval), ``rate_diff_test`` (two independent rates: Fisher's exact test, Newcombe's interval). Each result
  names its **unit of replication** (``unit``: "training seeds", "questions, one trained model per arm", …)
  and n, and ``fmt_test`` prints them beside the p-value.
* ``verdict`` turns a test and the hypothesised sign into an outcome phrase that reports an effect in the
  wrong direction as such; ``holm`` adjusts a family of p-values; ``min_detectable`` gives, for a null, the
  smallest effect the design had 80% power to see **at the level its verdict uses** (α split over the declared
  Holm family, t quantiles of the real degrees of freedom); an interval that excludes 0 is never called a
  null, and a p below double precision prints as a bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

NAN = float("nan")


def _flat(sd: float, mean: float) -> bool:
    """No variance, up to rounding (the sd of [0.2, 0.2, 0.2] is 3e-17, not 0)."""
    return not sd > 1e-12 * max(1.0, abs(mean))


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


# ---- intervals -----------------------------------------------------------------------------------


def mean_ci(
    values: Sequence[float],
    level: float = 0.95,
    bounds: tuple[float, float] | None = None,
    allow_binary: bool = False,
) -> dict:
    """Mean with a Student-t interval over independent replicates (seeds, questions).

    ``bounds`` clips the interval to a quantity's range (a probability cannot go below 0). With n < 2 or zero
    variance the interval is undetermined (NaN), not a point. 0/1 outcomes are refused: use ``rate_ci``.
    """
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n >= 2 and not allow_binary and np.isin(v, (0.0, 1.0)).all():
        raise ValueError(
            "mean_ci got 0/1 outcomes, where a t interval collapses to a point; use rate_ci(successes, n)"
        )
    mean = float(v.mean()) if n else NAN
    sd = float(v.std(ddof=1)) if n > 1 else NAN
    if n > 1 and not _flat(sd, mean):
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
        lo, hi = mean - half, mean + half
        if bounds is not None:
            lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    else:
        lo = hi = NAN
    return {"n": n, "mean": mean, "sd": sd, "lo": lo, "hi": hi, "level": level, "method": "t"}


def rate_ci(successes: int, n: int, level: float = 0.95, method: str = "wilson") -> dict:
    """A rate with its Wilson score interval (``method="exact"``: Clopper–Pearson). Sound at 0/n and n/n,
    where a t interval collapses to a point; n = 0 gives NaN."""
    successes, n = int(successes), int(n)
    if not 0 <= successes <= max(n, 0):
        raise ValueError(f"successes must lie in 0..n, got {successes} of {n}")
    if n <= 0:
        return {
            "n": 0,
            "k": 0,
            "mean": NAN,
            "sd": NAN,
            "lo": NAN,
            "hi": NAN,
            "level": level,
            "method": method,
        }
    p = successes / n
    if method == "exact":
        ci = stats.binomtest(successes, n).proportion_ci(confidence_level=level, method="exact")
        lo, hi = float(ci.low), float(ci.high)
    elif method == "wilson":
        z = float(stats.norm.ppf(0.5 + level / 2))
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        lo, hi = min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))
    else:
        raise ValueError(f"method must be 'wilson' or 'exact', not {method!r}")
    return {
        "n": n,
        "k": successes,
        "mean": p,
        "sd": math.sqrt(p * (1 - p)),
        "lo": lo,
        "hi": hi,
        "level": level,
        "method": method,
    }


def wilson_ci(successes: int, n: int, level: float = 0.95) -> dict:
    """``rate_ci`` with the Wilson score interval (kept under this name for existing callers)."""
    return rate_ci(successes, n, level, "wilson")


def rates_ci(outcomes: Sequence[int | bool], level: float = 0.95) -> dict:
    """``rate_ci`` of a list of 0/1 outcomes."""
    vals = [int(bool(x)) for x in outcomes]
    return rate_ci(sum(vals), len(vals), level)


# ---- tests ---------------------------------------------------------------------------------------


def _direction(diff: float) -> str:
    if not _finite(diff):
        return "undetermined"
    return "higher" if diff > 0 else "lower" if diff < 0 else "equal"


def paired_test(a: Sequence[float], b: Sequence[float], unit: str, level: float = 0.95) -> dict:
    """Two-sided paired t-test of mean(a − b) = 0 over matched units (the same questions, seeds or windows
    scored for two arms). ``unit`` names what the n counts; a p-value is NaN with n < 2 or when every
    difference is the same."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    ci = mean_ci(d, level, allow_binary=True) if n else {"mean": NAN, "lo": NAN, "hi": NAN, "sd": NAN}
    p = t = NAN
    if n >= 2 and not _flat(ci["sd"], ci["mean"]):
        r = stats.ttest_1samp(d, 0.0)
        p, t = float(r.pvalue), float(r.statistic)
    return {
        "test": "paired t",
        "unit": unit,
        "n": n,
        "diff": ci["mean"],
        "lo": ci["lo"],
        "hi": ci["hi"],
        "sd": ci["sd"],
        "p": p,
        "t": t,
        "df": n - 1,
        "direction": _direction(ci["mean"]),
        "level": level,
        "mean_a": float(np.mean(a)) if n else NAN,
        "mean_b": float(np.mean(b)) if n else NAN,
    }


def paired_bootstrap_test(
    a: Sequence[float],
    b: Sequence[float],
    unit: str,
    level: float = 0.95,
    resamples: int = 9999,
    seed: int = 0,
) -> dict:
    """Two-sided paired test of mean(a − b) = 0 over matched items (the same queries scored for two arms) that
    assumes no distribution: a BCa bootstrap interval of the mean difference (resampling items) and the p of a
    sign-flip permutation test (each item's difference flipped at random), both from scipy. ``unit`` names the
    items; a claim from it is about the models scored, not about training (whose unit is the seed)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    out = {
        "test": "paired bootstrap + sign-flip permutation",
        "unit": unit,
        "n": n,
        "diff": float(d.mean()) if n else NAN,
        "lo": NAN,
        "hi": NAN,
        "sd": float(d.std(ddof=1)) if n > 1 else NAN,
        "p": NAN,
        "direction": _direction(float(d.mean())) if n else "undetermined",
        "level": level,
        "mean_a": float(np.mean(a)) if n else NAN,
        "mean_b": float(np.mean(b)) if n else NAN,
    }
    if n < 2 or not np.any(d != d[0]):
        return out  # every item moved alike (or too few): no spread to resample
    rng = np.random.default_rng(seed)
    ci = stats.bootstrap((d,), np.mean, confidence_level=level, n_resamples=resamples, rng=rng, method="BCa")
    perm = stats.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=resamples, alternative="two-sided", rng=rng
    )
    out.update(
        lo=float(ci.confidence_interval.low), hi=float(ci.confidence_interval.high), p=float(perm.pvalue)
    )
    return out


def welch_test(a: Sequence[float], b: Sequence[float], unit: str, level: float = 0.95) -> dict:
    """Two-sided Welch t-test of mean(a) = mean(b) for independent groups (e.g. training seeds of two arms),
    with a Welch–Satterthwaite interval of the difference. NaN with fewer than 2 per group or no variance in
    either."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    na, nb = len(x), len(y)
    diff = float(x.mean() - y.mean()) if na and nb else NAN
    p = t = df = lo = hi = NAN
    if na >= 2 and nb >= 2:
        va, vb = x.var(ddof=1) / na, y.var(ddof=1) / nb
        se = math.sqrt(va + vb)
        if not _flat(se, diff):
            df = (
                (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
                if va > 0 and vb > 0
                else (nb - 1 if va == 0 else na - 1)
            )
            t = diff / se
            p = float(2 * stats.t.sf(abs(t), df))
            half = float(stats.t.ppf(0.5 + level / 2, df) * se)
            lo, hi = diff - half, diff + half
    return {
        "test": "Welch t",
        "unit": unit,
        "n": [na, nb],
        "diff": diff,
        "lo": lo,
        "hi": hi,
        "p": p,
        "t": t,
        "df": df,
        "direction": _direction(diff),
        "level": level,
        "mean_a": float(x.mean()) if na else NAN,
        "mean_b": float(y.mean()) if nb else NAN,
    }


def _newcombe_paired(a11: int, a10: int, a01: int, a00: int, level: float) -> tuple[float, float]:
    """Newcombe's (1998) method 10 interval for a difference of paired proportions."""
    n = a11 + a10 + a01 + a00
    p1, p2 = (a11 + a10) / n, (a11 + a01) / n
    w1, w2 = rate_ci(a11 + a10, n, level), rate_ci(a11 + a01, n, level)
    den = (a11 + a10) * (a01 + a00) * (a11 + a01) * (a10 + a00)
    phi = (a11 * a00 - a10 * a01) / math.sqrt(den) if den > 0 else 0.0
    d = p1 - p2
    dl = math.sqrt(
        max(0.0, (p1 - w1["lo"]) ** 2 - 2 * phi * (p1 - w1["lo"]) * (w2["hi"] - p2) + (w2["hi"] - p2) ** 2)
    )
    du = math.sqrt(
        max(0.0, (w1["hi"] - p1) ** 2 - 2 * phi * (w1["hi"] - p1) * (p2 - w2["lo"]) + (p2 - w2["lo"]) ** 2)
    )
    return max(-1.0, d - dl), min(1.0, d + du)


def paired_rate_test(
    a: Sequence[int | bool], b: Sequence[int | bool], unit: str, level: float = 0.95
) -> dict:
    """The same items scored 0/1 for two models: the difference of rates with Newcombe's paired interval and
    McNemar's exact two-sided p (a binomial test on the discordant items)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    x, y = [int(bool(v)) for v in a], [int(bool(v)) for v in b]
    n = len(x)
    a11 = sum(1 for u, v in zip(x, y, strict=True) if u and v)
    a10 = sum(1 for u, v in zip(x, y, strict=True) if u and not v)
    a01 = sum(1 for u, v in zip(x, y, strict=True) if v and not u)
    a00 = n - a11 - a10 - a01
    if n == 0:
        return {
            "test": "McNemar exact",
            "unit": unit,
            "n": 0,
            "diff": NAN,
            "lo": NAN,
            "hi": NAN,
            "p": NAN,
            "direction": "undetermined",
            "level": level,
            "mean_a": NAN,
            "mean_b": NAN,
            "discordant": [0, 0],
        }
    diff = (a10 - a01) / n
    if a10 + a01 == 0:
        # no discordant item: Newcombe's interval collapses when the answers are identical (at a rate of 0.5
        # it is [0, 0]); the difference is then bounded by the share of items that could be discordant, 0/n's
        # upper bound
        u = rate_ci(0, n, level)["hi"]
        lo, hi = -u, u
    else:
        lo, hi = _newcombe_paired(a11, a10, a01, a00, level)
    p = float(stats.binomtest(a10, a10 + a01, 0.5).pvalue) if a10 + a01 else 1.0
    return {
        "test": "McNemar exact",
        "unit": unit,
        "n": n,
        "diff": diff,
        "lo": lo,
        "hi": hi,
        "p": p,
        "direction": _direction(diff),
        "level": level,
        "mean_a": sum(x) / n,
        "mean_b": sum(y) / n,
        "discordant": [a10, a01],
    }


def rate_diff_test(k_a: int, n_a: int, k_b: int, n_b: int, unit: str, level: float = 0.95) -> dict:
    """Two independent rates: the difference with Newcombe's hybrid score interval and Fisher's exact
    two-sided p."""
    if n_a <= 0 or n_b <= 0:
        return {
            "test": "Fisher exact",
            "unit": unit,
            "n": [n_a, n_b],
            "diff": NAN,
            "lo": NAN,
            "hi": NAN,
            "p": NAN,
            "direction": "undetermined",
            "level": level,
            "mean_a": NAN,
            "mean_b": NAN,
        }
    pa, pb = k_a / n_a, k_b / n_b
    wa, wb = rate_ci(k_a, n_a, level), rate_ci(k_b, n_b, level)
    d = pa - pb
    lo = d - math.sqrt((pa - wa["lo"]) ** 2 + (wb["hi"] - pb) ** 2)
    hi = d + math.sqrt((wa["hi"] - pa) ** 2 + (pb - wb["lo"]) ** 2)
    p = float(stats.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]]).pvalue)
    return {
        "test": "Fisher exact",
        "unit": unit,
        "n": [n_a, n_b],
        "diff": d,
        "lo": lo,
        "hi": hi,
        "p": min(1.0, p),
        "direction": _direction(d),
        "level": level,
        "mean_a": pa,
        "mean_b": pb,
    }


def welch_p(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
    """p-value of Welch's t-test (two-sided by default); NaN with fewer than 2 per group or no variance."""
    x, y = np.asarray(a, float), np.asarray(b, float)
    if len(x) < 2 or len(y) < 2 or (_flat(x.std(), x.mean()) and _flat(y.std(), y.mean())):
        return NAN
    return float(stats.ttest_ind(x, y, equal_var=False, alternative=alternative).pvalue)


def paired_p(a: Sequence[float], b: Sequence[float], alternative: str = "two-sided") -> float:
    """p-value of a paired t-test over matched units (two-sided by default); NaN with n < 2 or constant
    differences."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) < 2 or _flat(d.std(), d.mean()):
        return NAN
    return float(stats.ttest_1samp(d, 0.0, alternative=alternative).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (same order as given; NaN stays NaN and does not count)."""
    idx = [i for i, p in enumerate(pvalues) if _finite(p)]
    m = len(idx)
    out = [NAN] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def holm_family(pvalues: dict[str, float | None], family: Sequence[str]) -> dict[str, float]:
    """Holm over a family declared before the run. ``pvalues``: the tests this report ran (name → p). Every
    member of ``family`` counts in m: a member not tested, or whose p is undetermined, enters as p = 1 (it can
    never be rejected, so the adjustment stays valid) — the family never shrinks. Returns name → adjusted p
    for the tested members, NaN for one whose own p is undetermined. A tested name outside the family is a
    ValueError."""
    extra = [k for k in pvalues if k not in family]
    if extra:
        raise ValueError(f"test {extra[0]!r} is outside the declared Holm family {list(family)}")
    ps = [pvalues[k] if k in pvalues and _finite(pvalues[k]) else 1.0 for k in family]
    return {
        k: p if _finite(pvalues[k]) else NAN for k, p in zip(family, holm(ps), strict=True) if k in pvalues
    }


def declared_family(declared: Sequence[str] | None, tests: Sequence[str], what: str = "test") -> list[str]:
    """The Holm family a config declares before the run: every test its design makes (``tests``) when it
    declares none, else exactly those tests in any order; a family that drops one or adds one is a
    ValueError (raised in a config validator: the run never starts)."""
    if declared is None:
        return list(tests)
    if sorted(declared) != sorted(tests):
        raise ValueError(f"holm_family must list every {what} the design makes: {list(tests)}")
    return list(declared)


def holm_alpha(family: int, alpha: float = 0.05) -> float:
    """The per-test level a Holm family of ``family`` tests can promise any one of its tests: α / m (the
    threshold of the first, smallest p; a test later in Holm's order passes at a larger level only once every
    earlier one has). What a null's smallest detectable effect must be computed at when its verdict reads a
    Holm-adjusted p."""
    if family < 1:
        raise ValueError(f"a Holm family holds at least one test, got {family}")
    return alpha / family


def min_detectable(sd: float, n: int, *, family: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided one-sample/paired t-test over ``n`` units with per-unit
    standard deviation ``sd`` detects with probability ``power`` at the level the verdict uses: ``alpha``
    split over a Holm ``family`` of that many tests (``holm_alpha``; ``family=1`` for a test outside any
    family), with the t quantiles of the real n − 1 degrees of freedom. ``sd`` is itself estimated: from n ≤ 3
    values it is poorly known (``spread_note`` says so), and the figure is as uncertain as it is."""
    if n < 2 or not _finite(sd):
        return NAN
    df, a = n - 1, holm_alpha(family, alpha)
    return float((stats.t.ppf(1 - a / 2, df) + stats.t.ppf(power, df)) * sd / math.sqrt(n))


def min_detectable_welch(
    sd_a: float, n_a: int, sd_b: float, n_b: int, *, family: int, alpha: float = 0.05, power: float = 0.8
) -> float:
    """``min_detectable`` for two independent groups (Welch; the smaller group's degrees of freedom)."""
    if n_a < 2 or n_b < 2 or not (_finite(sd_a) and _finite(sd_b)):
        return NAN
    se = math.sqrt(sd_a**2 / n_a + sd_b**2 / n_b)
    df, a = min(n_a, n_b) - 1, holm_alpha(family, alpha)
    return float((stats.t.ppf(1 - a / 2, df) + stats.t.ppf(power, df)) * se)


def spread_note(n: int) -> str:
    """A warning to print beside a t interval or a smallest detectable effect whose spread rests on ≤ 3 values
    (the sample sd of 2 values ranges over ×0.03–×2.2 of the true one at 95%, of 3 values ×0.16–×1.9), else
    ""."""
    if n <= 3:
        return (
            f"the spread rests on {n} values and is poorly estimated: read the interval's width, and the "
            "smallest detectable effect, with that in mind"
        )
    return ""


def narrow_for_n(est: float, lo: float, hi: float, n: int, min_ratio: float = 0.1) -> bool:
    """Whether a t interval over n ≤ 3 replicates is narrower than ``min_ratio`` of its estimate's size: three
    nearly equal values give an interval that claims a precision n = 3 cannot carry."""
    if n > 3 or not (_finite(est) and _finite(lo) and _finite(hi)) or est == 0:
        return False
    return (hi - lo) < min_ratio * abs(est)


# ---- words ---------------------------------------------------------------------------------------


def verdict(test: dict, expected: int = 1, alpha: float = 0.05, p: float | None = None) -> dict:
    """What a two-sided test shows, relative to a hypothesised sign (``expected`` +1: a > b; −1: a < b; 0:
    none).

    Returns ``{"result": "as hypothesised" | "opposite" | "null" | "undetermined", "significant", "words"}``;
    an effect significant in the wrong direction is "opposite", never folded into "null". ``p`` overrides the
    test's own p (e.g. a Holm-adjusted one).
    """
    p = test["p"] if p is None else p
    if not _finite(p):
        return {
            "result": "undetermined",
            "significant": False,
            "words": "undetermined (too few independent units or no variance)",
        }
    if p >= alpha:
        lo, hi = test.get("lo"), test.get("hi")
        if _finite(lo) and _finite(hi) and (lo > 0 or hi < 0):
            # the p is adjusted (Holm) but the interval is not: never call that a null
            return {
                "result": "not significant after adjustment",
                "significant": False,
                "words": f"not significant after adjustment ({fmt_p(p)}), though its unadjusted 95% interval "
                "excludes 0: not a null",
            }
        return {"result": "null", "significant": False, "words": "no significant difference (a null result)"}
    sign = 1 if test["diff"] > 0 else -1
    if expected == 0:
        return {"result": "significant", "significant": True, "words": f"significantly {test['direction']}"}
    if sign == expected:
        return {
            "result": "as hypothesised",
            "significant": True,
            "words": f"significantly {test['direction']}, as hypothesised",
        }
    return {
        "result": "opposite",
        "significant": True,
        "words": (
            f"significantly {test['direction']}: opposite to the hypothesis (a finding, most likely a "
            "confound)"
        ),
    }


def fmt_num(x: float | None, digits: int = 3, fmt: str = "f") -> str:
    """A number, or "undetermined" for NaN / None (how strict JSON stores NaN)."""
    return f"{x:.{digits}{fmt}}" if _finite(x) else "undetermined"


def fmt_ci(ci: dict, digits: int = 3, fmt: str = "f") -> str:
    """``0.467 [0.426, 0.507]``; ``fmt="g"`` gives significant digits (for small probabilities); an
    undetermined interval prints as ``0.467 [undetermined]``."""
    if not (_finite(ci.get("lo")) and _finite(ci.get("hi"))):
        return f"{fmt_num(ci['mean'], digits, fmt)} [undetermined]"
    lo, hi = ci["lo"], ci["hi"]
    while digits < 9 and lo != hi and f"{lo:.{digits}{fmt}}" == f"{hi:.{digits}{fmt}}":
        digits += 1  # a narrow interval: the digits that tell its bounds apart, never [a, a]
    return f"{fmt_num(ci['mean'], digits, fmt)} [{lo:.{digits}{fmt}}, {hi:.{digits}{fmt}}]"


def fmt_p(p: float) -> str:
    if not _finite(p):
        return "p undetermined"
    if (
        p < 1e-15
    ):  # below what double arithmetic resolves (an exact test's p underflows to 0): a bound, never 0
        return "p < 1e-15"
    return f"p = {p:.2g}" if p >= 1e-4 else f"p = {p:.1e}"


def fmt_n(test: dict) -> str:
    n = test["n"]
    return f"n = {n[0]} vs {n[1]}" if isinstance(n, list) else f"n = {n}"


def fmt_test(test: dict, digits: int = 3, fmt: str = "f", p: float | None = None) -> str:
    """``Δ +0.120 [0.050, 0.190], two-sided p = 0.003 (paired t; unit: questions, n = 50)``."""
    d = test["diff"]
    sign = "+" if _finite(d) and d > 0 else ""
    ci = fmt_ci({"mean": d, "lo": test["lo"], "hi": test["hi"]}, digits, fmt)
    pp = test["p"] if p is None else p
    label = "Holm-adjusted two-sided" if p is not None else "two-sided"
    ptxt = fmt_p(pp).replace("p ", f"{label} p ", 1) if _finite(pp) else "p undetermined"
    return f"Δ {sign}{ci}, {ptxt} ({test['test']}; unit: {test['unit']}, {fmt_n(test)})"
