"""Merge methods over one tensor at a time: a small class each, registered by the name a config uses.

Notation: θ_b the base tensor, θ_i the i-th fine-tuned tensor, τ_i = θ_i − θ_b its task vector, w_i its
weight, d_i its density (fraction kept), λ the global scale (``lambda``). Names and defaults follow
mergekit where mergekit has the method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TensorJob:
    """Everything a method sees for one tensor."""

    name: str
    base: torch.Tensor | None
    tuned: list[torch.Tensor]
    weights: list[float]
    densities: list[float]
    lam: float = 1.0
    normalize: bool = True
    generators: list[torch.Generator] = field(default_factory=list)  # one per input (DARE)
    masks: list[torch.Tensor] | None = None  # one bool mask per input (Localize-and-Stitch)
    thresholds: list[float] | None = None  # TIES trim on a chunk: keep |τ_i| ≥ the whole tensor's k-th largest

    def taus(self) -> list[torch.Tensor]:
        return [t - self.base for t in self.tuned]


class Method:
    name = ""
    needs_base = True
    trims = False  # trims each τ to its top density per tensor (needs the whole tensor's threshold when chunked)
    normalize = False  # default of the ``normalize`` parameter (divide by the summed weights)

    def merge(self, job: TensorJob) -> torch.Tensor:
        raise NotImplementedError


REGISTRY: dict[str, Method] = {}


def register(cls):
    REGISTRY[cls.name] = cls()
    return cls


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude (per tensor), zero the rest."""
    if density >= 1.0:
        return tau
    k = int(round(density * tau.numel()))
    if k <= 0:
        return torch.zeros_like(tau)
    flat = tau.abs().flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(k).indices] = True
    return tau * keep.view_as(tau)


def trim_threshold(tau: torch.Tensor, density: float) -> float:
    """The magnitude of the k-th largest |τ| entry (k = density · numel): ``trim`` keeps |τ| ≥ this."""
    k = int(round(density * tau.numel()))
    if density >= 1.0 or k >= tau.numel():
        return 0.0
    if k <= 0:
        return float("inf")
    return float(tau.abs().flatten().topk(k).values[-1])


def drop_and_rescale(tau: torch.Tensor, density: float, gen: torch.Generator) -> torch.Tensor:
    """DARE: drop each entry with probability 1 − density, scale survivors by 1/density (keeps E[τ])."""
    if density >= 1.0:
        return tau
    keep = torch.rand(tau.shape, generator=gen) < density
    return tau * keep / density


def disjoint_mean(taus: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    """TIES: elect each coordinate's sign by the weighted sum, then average only the entries that agree."""
    stacked = torch.stack([w * t for w, t in zip(weights, taus, strict=True)])
    sign = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    total = (stacked * agree).sum(0)
    if not normalize:
        return total
    wsum = (torch.tensor(weights, dtype=stacked.dtype).view(-1, *[1] * taus[0].dim()) * agree).sum(0)
    return torch.where(wsum != 0, total / wsum.clamp_min(1e-12), torch.zeros_like(total))


def weighted_sum(weights: list[float], tensors: list[torch.Tensor], normalize: bool) -> torch.Tensor:
    """Σ w_i t_i, divided by Σ w_i when ``normalize``."""
    out = sum(w * t for w, t in zip(weights, tensors, strict=True))
    return out / sum(weights) if normalize else out


@register
class Linear(Method):
    """θ = Σ w_i θ_i / Σ w_i (a weighted average of whole models; no base needed)."""

    name = "linear"
    needs_base = False
    normalize = True

    def merge(self, job: TensorJob) -> torch.Tensor:
        return weighted_sum(job.weights, job.tuned, job.normalize)


@register
class TaskArithmetic(Method):
    """θ = θ_b + λ Σ w_i τ_i."""

    name = "task_arithmetic"

    def merge(self, job: TensorJob) -> torch.Tensor:
        return job.base + job.lam * weighted_sum(job.weights, job.taus(), normalize=False)


@register
class Ties(Method):
    """TIES: trim each τ_i to its top d_i by magnitude, elect signs, disjoint mean; θ = θ_b + λ · merged."""

    name = "ties"
    normalize = True
    trims = True

    def merge(self, job: TensorJob) -> torch.Tensor:
        if job.thresholds is not None:
            taus = [t * (t.abs() >= thr) for t, thr in zip(job.taus(), job.thresholds, strict=True)]
        else:
            taus = [trim(t, d) for t, d in zip(job.taus(), job.densities, strict=True)]
        return job.base + job.lam * disjoint_mean(taus, job.weights, job.normalize)


@register
class DareLinear(Method):
    """DARE then task arithmetic: θ = θ_b + λ Σ w_i · drop(τ_i) / d_i."""

    name = "dare_linear"

    def merge(self, job: TensorJob) -> torch.Tensor:
        taus = [drop_and_rescale(t, d, g) for t, d, g in zip(job.taus(), job.densities, job.generators, strict=True)]
        return job.base + job.lam * weighted_sum(job.weights, taus, job.normalize)


@register
class DareTies(Method):
    """DARE then TIES's sign election and disjoint mean."""

    name = "dare_ties"
    normalize = True

    def merge(self, job: TensorJob) -> torch.Tensor:
        taus = [drop_and_rescale(t, d, g) for t, d, g in zip(job.taus(), job.densities, job.generators, strict=True)]
        return job.base + job.lam * disjoint_mean(taus, job.weights, job.normalize)


@register
class LocalizeStitch(Method):
    """Stitch: θ = θ_b + Σ_i (γ_i / count) ⊙ τ_i, count = Σ_i γ_i per coordinate (γ_i binary masks from localize)."""

    name = "localize_stitch"

    def merge(self, job: TensorJob) -> torch.Tensor:
        assert job.masks is not None, "localize_stitch needs masks"
        count = torch.stack([m.float() for m in job.masks]).sum(0)
        out = sum(m * t for m, t in zip(job.masks, job.taus(), strict=True))
        return job.base + job.lam * torch.where(count > 0, out / count.clamp_min(1), torch.zeros_like(out))
