"""Merge methods over one tensor at a time: a small class each, registered by the name a config uses.

Notation: θ_b the base tensor, θ_i the i-th fine-tuned tensor, τ_i = θ_i − θ_b its task vector, w_i its
weight, d_i its density (fraction kept), λ the global scale (``lambda``). Where mergekit has the method, its
config keys mean what they mean in mergekit 0.1.5 and give its output (``tests/test_mergekit_parity.py`` runs
mergekit itself): the kept count of a trim floors (at least one entry), a coordinate whose weighted sign sum
is exactly 0 elects +, ``rescale`` restores each sparsified task vector's L1 norm, and the defaults of
``normalize`` (linear, ties: on; task_arithmetic, dare_*: off) and ``rescale`` (dare_*: on) are mergekit's.
One deliberate difference: DARE's random keep-masks come from heredity's own generator, seeded per (seed,
tensor, model) so a model's mask never depends on the other inputs or on chunking, where mergekit draws from
torch's global RNG; the two agree in distribution and, given the same masks, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TensorJob:
    """Everything a method sees for one tensor (or one row chunk of it)."""

    name: str
    base: torch.Tensor | None
    tuned: list[torch.Tensor]
    weights: list[float]
    densities: list[float]
    lam: float = 1.0
    normalize: bool = True
    keeps: list[torch.Tensor] | None = (
        None  # DARE: one bool keep-mask per input (``dare_keep``), drawn by the caller
    )
    masks: list[torch.Tensor] | None = None  # one bool mask per input (Localize-and-Stitch)
    thresholds: list[float] | None = (
        None  # TIES trim on a chunk: keep |τ_i| ≥ the whole tensor's k-th largest
    )
    rescale: bool = False  # L1-rescale each sparsified τ_i to its original L1 norm (mergekit's ``rescale``)
    scales: list[float] | None = None  # those L1 factors, computed on the whole tensor (for a chunk)

    def taus(self) -> list[torch.Tensor]:
        return [t - self.base for t in self.tuned]


class Method:
    name = ""
    needs_base = True
    trims = (
        False  # trims each τ to its top density per tensor (needs the whole tensor's threshold when chunked)
    )
    drops = False  # DARE: random keep-masks, one per input
    normalize = False  # default of the ``normalize`` parameter (divide by the summed weights)
    rescale = False  # default of the ``rescale`` parameter
    params: frozenset[str] = frozenset({"weight"})  # the parameters a config may give this method

    def merge(self, job: TensorJob) -> torch.Tensor:
        raise NotImplementedError


REGISTRY: dict[str, Method] = {}


def register(cls):
    REGISTRY[cls.name] = cls()
    return cls


def keep_count(density: float, numel: int) -> int:
    """Entries a magnitude trim keeps: mergekit's ``max(1, int(density · numel))`` (floor, at least one)."""
    if density >= 1.0:
        return numel
    if density <= 0 or numel == 0:
        return 0
    return max(1, int(density * numel))


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``keep_count`` entries of largest magnitude (per tensor), zero the rest; ties broken as
    mergekit does (the first ``k`` of a descending argsort)."""
    if density >= 1.0:
        return tau
    k = keep_count(density, tau.numel())
    if k == 0:
        return torch.zeros_like(tau)
    keep = torch.zeros(tau.numel(), dtype=torch.bool)
    keep[torch.argsort(tau.abs().flatten().float(), descending=True)[:k]] = True
    return tau * keep.view_as(tau)


def trim_threshold(tau: torch.Tensor, density: float) -> float:
    """The magnitude of the k-th largest |τ| entry (k = ``keep_count``): ``trim`` keeps |τ| ≥ this."""
    k = keep_count(density, tau.numel())
    if density >= 1.0 or k >= tau.numel():
        return 0.0
    if k <= 0:
        return float("inf")
    return float(tau.abs().flatten().float().topk(k).values[-1])


def l1_factor(tau: torch.Tensor, sparse: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """‖τ‖₁ / ‖sparse‖₁ (a 0-dim tensor of τ's dtype, computed as mergekit's ``rescaled_masked_tensor`` does):
    the factor that gives a sparsified τ back its L1 norm; 1 when either norm is below ``eps``."""
    before, after = tau.abs().sum(), sparse.abs().sum()
    return torch.ones((), dtype=tau.dtype) if before < eps or after < eps else before / after


def sparsified(job: TensorJob) -> list[torch.Tensor]:
    """Each τ_i trimmed (TIES: top-k by magnitude) or dropped (DARE: its keep-mask), then L1-rescaled if
    asked."""
    taus = job.taus()
    if job.keeps is not None:
        out = [t * k for t, k, d in zip(taus, job.keeps, job.densities, strict=True)]
        out = [o if d < 1.0 else t for o, t, d in zip(out, taus, job.densities, strict=True)]
    elif job.thresholds is not None:
        out = [t * (t.abs() >= thr) for t, thr in zip(taus, job.thresholds, strict=True)]
    else:
        out = [trim(t, d) for t, d in zip(taus, job.densities, strict=True)]
    if job.rescale:
        factors = job.scales or [l1_factor(t, o) for t, o in zip(taus, out, strict=True)]
        out = [o if d >= 1.0 else o * f for o, f, d in zip(out, factors, job.densities, strict=True)]
    return out


def disjoint_mean(taus: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    """TIES: elect each coordinate's sign by the weighted sum (a sum of exactly 0 elects +, as mergekit does),
    then sum only the nonzero entries of that sign, divided by their summed weights when ``normalize``."""
    stacked = torch.stack([w * t for w, t in zip(weights, taus, strict=True)])
    majority = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).to(stacked.dtype)
    agree = torch.sign(stacked) == majority
    total = (stacked * agree).sum(0)
    if not normalize:
        return total
    wsum = (torch.tensor(weights, dtype=stacked.dtype).view(-1, *[1] * taus[0].dim()) * agree).sum(0)
    return total / torch.where(wsum == 0, torch.ones_like(wsum), wsum)


def weighted_sum(weights: list[float], tensors: list[torch.Tensor], normalize: bool) -> torch.Tensor:
    """Σ w_i t_i, divided by Σ w_i when ``normalize`` (by 1 when |Σ w_i| < 1e-8, as mergekit does)."""
    out = sum(w * t for w, t in zip(weights, tensors, strict=True))
    if not normalize:
        return out
    total = sum(weights)
    return out / (total if abs(total) >= 1e-8 else 1.0)


@register
class Linear(Method):
    """θ = Σ w_i θ_i / Σ w_i (a weighted average of whole models; no base needed)."""

    name = "linear"
    needs_base = False
    normalize = True
    params = frozenset({"weight", "normalize"})

    def merge(self, job: TensorJob) -> torch.Tensor:
        return weighted_sum(job.weights, job.tuned, job.normalize)


@register
class TaskArithmetic(Method):
    """θ = θ_b + λ Σ w_i τ_i (÷ Σ w_i with ``normalize``, default off as in mergekit)."""

    name = "task_arithmetic"
    params = frozenset({"weight", "lambda", "normalize"})

    def merge(self, job: TensorJob) -> torch.Tensor:
        return job.base + job.lam * weighted_sum(job.weights, job.taus(), job.normalize)


@register
class Ties(Method):
    """TIES: trim each τ_i to its top d_i by magnitude, elect signs, disjoint mean; θ = θ_b + λ · merged."""

    name = "ties"
    normalize = True
    trims = True
    params = frozenset({"weight", "density", "lambda", "normalize", "rescale"})

    def merge(self, job: TensorJob) -> torch.Tensor:
        return job.base + job.lam * disjoint_mean(sparsified(job), job.weights, job.normalize)


@register
class DareLinear(Method):
    """DARE then task arithmetic: drop each entry of τ_i with probability 1 − d_i, L1-rescale the survivors to
    ‖τ_i‖₁ (mergekit's ``rescale``, default on; the DARE paper's 1/d_i is the same in expectation), then
    θ = θ_b + λ Σ w_i τ̃_i."""

    name = "dare_linear"
    drops = True
    rescale = True
    params = frozenset({"weight", "density", "lambda", "normalize", "rescale"})

    def merge(self, job: TensorJob) -> torch.Tensor:
        return job.base + job.lam * weighted_sum(job.weights, sparsified(job), job.normalize)


@register
class DareTies(Method):
    """DARE's drop and rescale, then TIES's sign election and disjoint sum (``normalize`` off by default, as
    in mergekit)."""

    name = "dare_ties"
    drops = True
    rescale = True
    params = frozenset({"weight", "density", "lambda", "normalize", "rescale"})

    def merge(self, job: TensorJob) -> torch.Tensor:
        return job.base + job.lam * disjoint_mean(sparsified(job), job.weights, job.normalize)


@register
class LocalizeStitch(Method):
    """Stitch: θ = θ_b + Σ_i (γ_i / count) ⊙ τ_i, count = Σ_i γ_i per coordinate (γ_i binary masks from
    localize)."""

    name = "localize_stitch"
    params = frozenset({"lambda"})

    def merge(self, job: TensorJob) -> torch.Tensor:
        assert job.masks is not None, "localize_stitch needs masks"
        count = torch.stack([m.float() for m in job.masks]).sum(0)
        out = sum(m * t for m, t in zip(job.masks, job.taus(), strict=True))
        return job.base + job.lam * torch.where(count > 0, out / count.clamp_min(1), torch.zeros_like(out))
