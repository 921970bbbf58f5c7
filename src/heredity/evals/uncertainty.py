"""Knowing when a classifier does not know: confidence scores, calibration and out-of-distribution detection.

Scores, each from logits or probabilities (numpy, [..., N, C]):
- ``msp``: the maximum softmax probability (Hendrycks & Gimpel 2017);
- ``fit_temperature``: the T > 0 that minimises the NLL of softmax(logits / T) on held-out labels (Guo et al.
  2017), found by a bounded scalar search over log T;
- ``mc_dropout_probs``: the mean softmax of several stochastic passes (Gal & Ghahramani 2016); the caller
  supplies the passes;
- ``ensemble_probs``: the mean softmax of independently trained models (Lakshminarayanan et al. 2017).

Metrics: ``auroc`` and ``fpr_at_tpr`` (in-distribution as the positive class, higher score = more confident;
scikit-learn's ``roc_auc_score`` and ``roc_curve``), ``ece`` (expected calibration error over equal-width
confidence bins), ``nll`` (mean negative log-likelihood), and ``reliability`` (per-bin confidence and
accuracy, for the reliability diagram).

What this module does not know: models, training or the store.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def msp(probs: np.ndarray) -> np.ndarray:
    return np.asarray(probs).max(-1)


def confidence(probs: np.ndarray) -> np.ndarray:
    """−log Σ_{j ≠ top} p_j: a strictly increasing function of the max softmax probability (so the same AUROC
    and FPR) that does not saturate — at a small temperature the top probability rounds to 1.0 for many
    inputs, and ties would then decide the ranking."""
    p = np.asarray(probs, np.float64)
    rest = np.sort(p, -1)[..., :-1].sum(-1)  # the others' mass, summed directly (never 1 − max)
    return -np.log(np.maximum(rest, 1e-300))


def ensemble_probs(member_probs: np.ndarray) -> np.ndarray:
    """[M, N, C] softmax outputs of M models -> their mean [N, C]."""
    return np.asarray(member_probs).mean(0)


mc_dropout_probs = ensemble_probs  # [passes, N, C] -> [N, C]: the same average, over dropout masks


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    p = np.asarray(probs)[np.arange(len(y)), y]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda t: nll(softmax(logits, float(np.exp(t))), y),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(res.x))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> dict:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins: count 0, NaN)."""
    conf = msp(probs)
    right = (np.asarray(probs).argmax(-1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(which, conf, bins) / count
        acc = np.bincount(which, right, bins) / count
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": acc.tolist(),
    }


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Σ_b (n_b / N) |accuracy_b − confidence_b| over equal-width bins of the top probability."""
    r = reliability(probs, y, bins)
    n = np.asarray(r["count"], float)
    gap = np.abs(np.nan_to_num(np.asarray(r["accuracy"]) - np.asarray(r["confidence"])))
    return float((n * gap).sum() / n.sum())


def auroc(score_in: np.ndarray, score_out: np.ndarray) -> float:
    """P(an in-distribution input scores higher than an out-of-distribution one), ties counted half."""
    from sklearn.metrics import roc_auc_score

    s = np.concatenate([score_in, score_out])
    return float(roc_auc_score(np.r_[np.ones(len(score_in)), np.zeros(len(score_out))], s))


def fpr_at_tpr(score_in: np.ndarray, score_out: np.ndarray, tpr: float = 0.95) -> float:
    """The share of out-of-distribution inputs accepted at the threshold that keeps ``tpr`` of the
    in-distribution."""
    from sklearn.metrics import roc_curve

    s = np.concatenate([score_in, score_out])
    fpr, tp, _ = roc_curve(np.r_[np.ones(len(score_in)), np.zeros(len(score_out))], s)
    return float(fpr[tp >= tpr].min())
