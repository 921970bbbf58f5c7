"""A LoRA linear layer's training step on the CPU in fp32, with its skinny matmuls in their fast layout.

A LoRA projection adds ``s · (x Aᵀ) Bᵀ`` (rank r, 8 by default) to a frozen ``x Wᵀ + b``. Its matmuls are
skinny: one side is r wide. oneDNN/MKL run such a product several times faster when the r side comes first:
on SmolLM2's MLP shapes (384 tokens × 576 → 1536) ``(xaᵀ g)ᵀ`` takes 0.27 ms where ``gᵀ xa`` takes 1.0 ms,
``(Bᵀ gᵀ)ᵀ`` 0.21 ms where ``g B`` takes 0.76 ms. Under PEFT's module-by-module forward those products were
15% of a batch-16 SmolLM2 fine-tune's time at 12 GFLOP/s, against 106 GFLOP/s for the frozen weights'
matmuls (``torch.profiler``, session 26). ``LoraLinear`` computes the same function and gradients with every
skinny product in the fast layout, the scaling applied to the r-wide factor instead of the output, and the
LoRA term added into the base output (``addmm_``) instead of a separate add.

``installed(model)`` routes each eligible PEFT ``lora.Linear`` of ``model`` through it while a fine-tune runs;
every other case keeps PEFT's own forward (``eligible``): another device or dtype, dropout, DoRA or another
LoRA variant, several active adapters, a merged or disabled adapter, a trainable or non-``nn.Linear`` base,
no gradients. The result equals PEFT's up to float rounding (tests/test_fastlora.py compares outputs and
gradients); the adapter's parameters stay PEFT's, so what is saved is unchanged.
"""

from __future__ import annotations

import contextlib
import types

import torch


class LoraLinear(torch.autograd.Function):
    """``x Wᵀ + b + s · (x Aᵀ) Bᵀ`` for a frozen ``W`` (and ``b``); gradients for ``x``, ``A`` and ``B``."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        xa = (lora_a @ x2.t()).t()  # [M, r], the r side first
        xa = xa if scaling == 1.0 else xa * scaling  # scaled here, where it is r wide
        y = x2 @ weight.t() if bias is None else torch.addmm(bias, x2, weight.t())
        y.addmm_(xa, lora_b.t())
        ctx.save_for_backward(x2, xa, weight, lora_a, lora_b)
        ctx.scaling, ctx.shape = scaling, shape
        return y.view(*shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, xa, weight, lora_a, lora_b = ctx.saved_tensors
        s, need_x = ctx.scaling, ctx.needs_input_grad[0]
        g = grad.reshape(-1, weight.shape[0])
        gxa = (lora_b.t() @ g.t()).t()  # [M, r]: dL/d(x Aᵀ)
        gxa = gxa if s == 1.0 else gxa * s
        grad_b = (xa.t() @ g).t() if ctx.needs_input_grad[4] else None  # [N, r]
        grad_a = gxa.t() @ x2 if ctx.needs_input_grad[3] else None  # [r, K]
        grad_x = None
        if need_x:
            grad_x = (g @ weight).addmm_(gxa, lora_a).view(ctx.shape)
        return grad_x, None, None, grad_a, grad_b, None


def eligible(module) -> str | None:
    """The active adapter's name when ``module`` (a PEFT ``lora.Linear``) can run through ``LoraLinear``
    exactly as PEFT would compute it, else None."""
    from peft.tuners.lora.layer import Linear

    if not isinstance(module, Linear) or module.disable_adapters or module.merged:
        return None
    active = [a for a in module.active_adapters if a in module.lora_A]
    if len(active) != 1 or active[0] in getattr(module, "lora_variant", {}):
        return None
    a = active[0]
    base = module.base_layer
    if type(base) is not torch.nn.Linear or base.weight.requires_grad:
        return None
    if base.bias is not None and base.bias.requires_grad:
        return None
    if not isinstance(module.lora_dropout[a], torch.nn.Identity) or getattr(module, "fan_in_fan_out", False):
        return None
    if type(module.lora_A[a]) is not torch.nn.Linear or type(module.lora_B[a]) is not torch.nn.Linear:
        return None
    if module.lora_A[a].bias is not None or module.lora_B[a].bias is not None:
        return None
    return a


def _forward(self, x, *args, **kwargs):
    """PEFT's ``lora.Linear.forward``, through ``LoraLinear`` where that computes the same (``eligible``)."""
    a = None if args or kwargs or not torch.is_grad_enabled() else eligible(self)
    if a is None:
        return type(self).forward(self, x, *args, **kwargs)
    base, lora_a, lora_b = self.base_layer, self.lora_A[a].weight, self.lora_B[a].weight
    tensors = (x, base.weight, lora_a, lora_b) + (() if base.bias is None else (base.bias,))
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return type(self).forward(self, x, *args, **kwargs)
    return LoraLinear.apply(x, base.weight, base.bias, lora_a, lora_b, float(self.scaling[a]))


@contextlib.contextmanager
def installed(model):
    """Within the block, every PEFT ``lora.Linear`` of ``model`` runs ``_forward`` (PEFT's own forward
    wherever ``LoraLinear`` does not apply); afterwards each has its class's forward again."""
    from peft.tuners.lora.layer import Linear

    mods = [m for m in model.modules() if isinstance(m, Linear) and "forward" not in vars(m)]
    for m in mods:
        m.forward = types.MethodType(_forward, m)
    try:
        yield
    finally:
        for m in mods:
            vars(m).pop("forward", None)
