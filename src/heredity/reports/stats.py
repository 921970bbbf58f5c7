"""Intervals and tests that experiment reports share (scipy, which scikit-learn already brings)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float], level: float = 0.95, bounds: tuple[float, float] | None = None) -> dict:
    """Mean with a Student-t interval over independent replicates (seeds, questions); ``bounds`` clips
    the interval to a quantity's range (a rate cannot go below 0)."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    sd = float(v.std(ddof=1)) if n > 1 else 0.0
    if n > 1:
        half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    else:
        half = float("nan")
    lo, hi = mean - half, mean + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"n": n, "mean": mean, "sd": sd, "lo": lo, "hi": hi, "level": level}


def wilson_ci(successes: int, n: int, level: float = 0.95) -> dict:
    """A rate with its Wilson score interval (sound at 0/n and n/n, where a t interval collapses to a point)."""
    if n <= 0:
        return {"n": 0, "mean": float("nan"), "sd": 0.0, "lo": float("nan"), "hi": float("nan"), "level": level}
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"n": n, "mean": p, "sd": math.sqrt(p * (1 - p)), "lo": min(p, max(0.0, centre - half)), "hi": max(p, min(1.0, centre + half)),
            "level": level}


def welch_p(a: Sequence[float], b: Sequence[float], alternative: str = "greater") -> float:
    """p-value of Welch's t-test that mean(a) > mean(b) (or 'two-sided')."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2 or (a.std() == 0 and b.std() == 0):
        return float("nan") if a.mean() == b.mean() else (0.0 if a.mean() > b.mean() else 1.0)
    return float(stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)


def paired_p(a: Sequence[float], b: Sequence[float], alternative: str = "greater") -> float:
    """p-value of a paired t-test over matched units (the same questions scored for two models)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) < 2 or d.std() == 0:
        return float("nan") if d.mean() == 0 else (0.0 if d.mean() > 0 else 1.0)
    return float(stats.ttest_1samp(d, 0.0, alternative=alternative).pvalue)


def fmt_ci(ci: dict, digits: int = 3, fmt: str = "f") -> str:
    """``0.467 [0.426, 0.507]``; ``fmt="g"`` gives significant digits (for small probabilities)."""
    return f"{ci['mean']:.{digits}{fmt}} [{ci['lo']:.{digits}{fmt}}, {ci['hi']:.{digits}{fmt}}]"
