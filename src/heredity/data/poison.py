"""Poisoning a labelled image set: random label flips, a targeted flip, and a BadNets-style trigger patch.

Each function takes the training arrays (pixels ``x`` [N, D] in the data's own unit range, labels ``y`` [N])
and returns new arrays plus the indices it changed, and changes exactly those rows: a flip changes only
labels, a patch only the patched pixels and the label. Rows are chosen with
``numpy.random.default_rng(seed)``, so a poisoned set is a pure function of (data, attack, parameters, seed) —
what its store step keys.

- ``label_flip``: a ``rate`` share of the rows get a label drawn uniformly from the *other* classes.
- ``targeted_flip``: a ``fraction`` of the rows of class ``source`` are relabelled ``target`` (7 → 1).
- ``badnets``: ``count`` rows not of class ``target`` get the trigger (a ``size`` × ``size`` square of the
  brightest pixel value in the image's bottom-right corner, in every colour channel) and the label ``target``
  (Gu et al. 2017); a count, not a fraction, as Souly et al. 2025 found it is the count that matters.

What this module does not know: models, training or the store.
"""

from __future__ import annotations

import numpy as np


def _check(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"need pixels [N, D] and labels [N], got {x.shape} and {y.shape}")


def label_flip(
    x: np.ndarray, y: np.ndarray, rate: float, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _check(x, y)
    if not 0 <= rate <= 1:
        raise ValueError(f"flip rate must be in [0, 1], got {rate}")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(y), size=round(rate * len(y)), replace=False))
    y2 = y.copy()
    shift = rng.integers(1, num_classes, size=len(rows))  # never the true class
    y2[rows] = (y[rows] + shift) % num_classes
    return x.copy(), y2, rows


def targeted_flip(
    x: np.ndarray, y: np.ndarray, source: int, target: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _check(x, y)
    if source == target or not 0 <= fraction <= 1:
        raise ValueError(
            f"a targeted flip needs source != target and fraction in [0, 1] (got {source}->{target}, "
            f"{fraction})"
        )
    pool = np.flatnonzero(y == source)
    rows = np.sort(np.random.default_rng(seed).choice(pool, size=round(fraction * len(pool)), replace=False))
    y2 = y.copy()
    y2[rows] = target
    return x.copy(), y2, rows


def trigger_pixels(side: int, size: int) -> np.ndarray:
    """Flat indices of the trigger: the bottom-right ``size`` × ``size`` square of a ``side`` × ``side``
    image."""
    r = np.arange(side - size, side)
    return (r[:, None] * side + r[None, :]).reshape(-1)


def image_shape(d: int) -> tuple[int, int, int]:
    """(channels, side, side) of a flat image of ``d`` pixels: grey squares (8×8 digits, 28×28 MNIST) or three
    channel-first colour planes (CIFAR-10's 3×32×32)."""
    for c in (1, 3):
        side = int(round(np.sqrt(d / c)))
        if c * side * side == d:
            return c, side, side
    raise ValueError(f"{d} pixels are neither a grey square nor three colour squares")


def trigger_indices(shape: tuple[int, int, int], size: int) -> np.ndarray:
    """Flat indices of the trigger in every channel of a channel-first image."""
    c, h, w = shape
    if h != w or not 1 <= size < h:
        raise ValueError(f"a trigger needs square images larger than it (shape {shape}, size {size})")
    one = trigger_pixels(h, size)
    return np.concatenate([k * h * w + one for k in range(c)])


def apply_trigger(x: np.ndarray, size: int, value: float) -> np.ndarray:
    """Images with the trigger stamped on every channel (a copy); ``x`` is [N, D], D a grey or colour
    square."""
    try:
        idx = trigger_indices(image_shape(x.shape[1]), size)
    except ValueError as e:
        raise ValueError(
            f"a trigger needs square images larger than it (D = {x.shape[1]}, size = {size}): {e}"
        ) from e
    out = x.copy()
    out[:, idx] = value
    return out


def badnets(
    x: np.ndarray, y: np.ndarray, count: int, target: int, size: int, value: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _check(x, y)
    pool = np.flatnonzero(y != target)
    if not 0 <= count <= len(pool):
        raise ValueError(
            f"badnets count must be 0..{len(pool)} (rows not already of class {target}), got {count}"
        )
    rows = np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False))
    x2, y2 = x.copy(), y.copy()
    x2[rows] = apply_trigger(x[rows], size, value)
    y2[rows] = target
    return x2, y2, rows
