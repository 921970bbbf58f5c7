"""A lean one-token decode step for Llama-family models (Llama, Qwen2, Mistral without sliding window).

Sampling spends almost all its time in one-token forwards at a small batch. Hugging Face's forward
is general (masks built per call, seven projection matmuls per layer, a cache API per layer); this step
does the same arithmetic with fused projections (one QKV matmul, one gate-up matmul per layer), writes
keys and values straight into the preallocated cache, and runs SDPA with a padding-only mask and
grouped-query heads. It is used only where it is exact: the architecture checks below fall back to the
HF forward otherwise, and tests compare its logits with HF's.

``precision="int8"`` (opt-in, ``SampleConfig.precision``; never exact): every projection and the output head
multiply in int8 through PyTorch's fbgemm kernels — weights quantized once per output channel (symmetric),
activations per call (dynamic) — while norms, attention, the cache and the prompt's prefill stay fp32.
``bench/sample.py`` reports its speed beside CTranslate2 int8 and its per-token KL from the fp32 step on the
same tokens (``forced_logits``).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

SUPPORTED = {"llama", "qwen2", "mistral"}
PRECISIONS = ("fp32", "int8")


def _packed(w: torch.Tensor, b: torch.Tensor | None, precision: str):
    """A projection as ``_mm`` takes it: the fp32 weight and bias, or int8 weights (per output channel,
    symmetric) packed for fbgemm's dynamic-activation kernel."""
    if precision == "fp32":
        return ("fp32", w, b)
    scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # PyTorch marks its quantized tensors deprecated; 2.13 has them
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(w.detach().float(), scale, zero, 0, torch.qint8)
        return (
            "int8",
            torch.ops.quantized.linear_prepack(q, None if b is None else b.detach().float()),
            None,
        )


def _mm(x: torch.Tensor, p) -> torch.Tensor:
    kind, a, b = p
    if kind == "fp32":
        return F.linear(x, a, b)
    return torch.ops.quantized.linear_dynamic(x.contiguous(), a, True)  # reduce_range: no int16 saturation


def unsupported(model) -> str | None:
    """Why this step would not compute exactly HF's logits for ``model`` (then sampling uses HF's forward), or
    None."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in SUPPORTED:
        return f"architecture {getattr(cfg, 'model_type', None)!r} is not one of {sorted(SUPPORTED)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} (only silu)"
    if getattr(cfg, "pretraining_tp", 1) != 1:
        return "pretraining_tp != 1"
    if getattr(cfg, "mlp_bias", False):
        return "MLP biases (mlp_bias=True): the fused gate-up and down projections have none"
    window = getattr(cfg, "sliding_window", None)
    sliding_layers = any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or []))
    if sliding_layers or (
        window and (cfg.model_type == "mistral" or getattr(cfg, "use_sliding_window", False))
    ):
        return f"sliding-window attention (window {window}): this step attends to the whole cache"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "no decoder layers / rotary embedding where Llama keeps them"
    if hasattr(model, "peft_config"):
        return "an unmerged PEFT adapter"
    hooked = next((n for n, m in model.named_modules() if m._forward_hooks or m._forward_pre_hooks), None)
    if hooked is not None:
        return (
            f"forward hooks on {hooked or 'the model'} (e.g. a steering vector), "
            "which the fused step would skip"
        )
    return None


def supports(model) -> bool:
    return unsupported(model) is None


def for_model(model, precision: str = "fp32") -> FastDecoder:
    """The model's FastDecoder at ``precision``, built once and reused while its weights stay the same (~0.1 s
    saved per ``sample`` call on SmolLM2): the cache key is every parameter's storage and in-place version
    counter, so a training step or a weight swap makes a fresh one."""
    key = (precision, *((p.data_ptr(), p._version) for p in model.parameters()))
    cached = getattr(model, "_heredity_fast", None) or {}
    if precision in cached and cached[precision][0] == key:
        return cached[precision][1]
    fast = FastDecoder(model, precision)
    object.__setattr__(model, "_heredity_fast", {**cached, precision: (key, fast)})
    return fast


class FastDecoder:
    """Fused weights built once per model; ``step`` runs one token for every row of the batch."""

    def __init__(self, model, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        inner = model.model
        self.rotary = inner.rotary_emb
        cfg = model.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.layers = []
        with torch.no_grad():
            for layer in inner.layers:
                a, m = layer.self_attn, layer.mlp
                qkv_w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
                qkv_b = None
                if a.q_proj.bias is not None:
                    qkv_b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
                gu_w = torch.cat([m.gate_proj.weight, m.up_proj.weight])
                self.layers.append(
                    (
                        layer.input_layernorm,
                        _packed(qkv_w, qkv_b, precision),
                        _packed(a.o_proj.weight, a.o_proj.bias, precision),
                        layer.post_attention_layernorm,
                        _packed(gu_w, None, precision),
                        _packed(m.down_proj.weight, None, precision),
                        getattr(a, "scaling", self.head_dim**-0.5),
                    )
                )
        self.norm = inner.norm
        self.embed = inner.embed_tokens
        self.lm_head = model.lm_head
        self.head = None
        if precision != "fp32":
            with torch.no_grad():
                self.head = _packed(model.lm_head.weight, model.lm_head.bias, precision)
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv * self.head_dim

    @staticmethod
    def _rms(norm, x):
        return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)

    @torch.inference_mode()
    def step(self, ids: torch.Tensor, pos: torch.Tensor, cache, col: int, mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] for one new token per row.

        ``ids``/``pos``: [B] token and position; the new key/value go to column ``col`` of every layer's
        preallocated buffers (``cache.layers[i]._k/_v``, [B, kv_heads, capacity, head_dim]); ``mask``: [B,
        col + 1] (1 = attend).
        """
        B = ids.shape[0]
        x = self.embed(ids)  # [B, D]
        cos, sin = self.rotary(x[:, None, :], pos[:, None])  # [B, 1, hd]
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, 1, hd]
        attn_mask = mask[:, None, None, : col + 1].bool()
        half = self.head_dim // 2

        def rope(t):  # HF's apply_rotary_pos_emb: t·cos + rotate_half(t)·sin
            return t * cos + torch.cat((-t[..., half:], t[..., :half]), dim=-1) * sin

        for (ln1, qkv_p, o_p, ln2, gu_p, d_p, scale), cl in zip(self.layers, cache.layers, strict=True):
            h = self._rms(ln1, x)
            qkv = _mm(h, qkv_p)
            q = qkv[:, : self.q_size].view(B, self.n_heads, 1, self.head_dim)
            k = qkv[:, self.q_size : self.q_size + self.kv_size].view(B, self.n_kv, 1, self.head_dim)
            v = qkv[:, self.q_size + self.kv_size :].view(B, self.n_kv, 1, self.head_dim)
            q, k = rope(q), rope(k)
            cl._k[:, :, col : col + 1] = k
            cl._v[:, :, col : col + 1] = v
            att = F.scaled_dot_product_attention(
                q,
                cl._k[:, :, : col + 1],
                cl._v[:, :, : col + 1],
                attn_mask=attn_mask,
                scale=scale,
                enable_gqa=self.n_kv != self.n_heads,
            )
            x = x + _mm(att.reshape(B, self.q_size), o_p)
            h = self._rms(ln2, x)
            g, u = _mm(h, gu_p).chunk(2, dim=-1)
            x = x + _mm(F.silu(g) * u, d_p)
        for cl in cache.layers:
            cl.n = col + 1
            cl.keys, cl.values = cl._k[:, :, : col + 1], cl._v[:, :, : col + 1]
        x = self._rms(self.norm, x)
        return self.lm_head(x) if self.head is None else _mm(x, self.head)


def forced_logits(model, prompt: list[int], tokens: list[int], precision: str = "fp32") -> torch.Tensor:
    """The decode step's logits [len(tokens), vocab] along a fixed continuation: the prompt prefilled by the
    model (fp32), then each of ``tokens`` fed in turn, as sampling feeds the token it drew; row t is the
    distribution over ``tokens[t]``. For measuring a precision against fp32 on the same tokens."""
    from heredity.engine.cache import prealloc_cache

    fast = for_model(model, precision)
    n_layers = len(model.model.layers)
    cache = prealloc_cache(n_layers, len(prompt) + len(tokens))
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([prompt]), cache=cache, use_cache=True, logits_to_keep=1)
        rows, col = [out.logits[0, -1].float()], len(prompt)
        mask = torch.ones(1, len(prompt) + len(tokens), dtype=torch.long)
        for t in tokens[:-1]:
            rows.append(fast.step(torch.tensor([t]), torch.tensor([col]), cache, col, mask).float()[0])
            col += 1
    return torch.stack(rows)
