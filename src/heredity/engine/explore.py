"""One step of next-token prediction, opened up: the top-k candidates and the attention of every position.

``next_token`` runs the model once over a token sequence and returns the distribution over the next token
(top-k with probabilities) and, when asked, one layer/head's attention matrix. The lab server's explorer
calls it once per step; choosing a candidate appends its id and calls it again.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import torch


@contextmanager
def eager_attention(model):
    """Switch a model to the eager attention kernel (the only one that returns attention weights) for a
    while."""
    inner = getattr(model, "base_model", model)
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager") or not hasattr(inner, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    from heredity.models.tiny import _bytes_to_unicode

    return {v: k for k, v in _bytes_to_unicode().items()}


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The raw bytes a token stands for (byte-level BPE tokens can hold part of a UTF-8 character)."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    dec = _byte_decoder()
    if isinstance(piece, str) and piece and all(ch in dec for ch in piece):
        return bytes(dec[ch] for ch in piece)
    return tokenizer.decode([int(token_id)], skip_special_tokens=False).encode()


def token_text(tokenizer, token_id: int) -> str:
    """A token as text; one that is not whole UTF-8 shows as ``bytes:\\xNN...`` (as OpenAI's API writes
    it)."""
    s = tokenizer.decode([int(token_id)], skip_special_tokens=False)
    if "\ufffd" not in s:
        return s
    raw = token_bytes(tokenizer, token_id)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    return [token_text(tokenizer, i) for i in ids]


def _attention_modules(model) -> list:
    """The self-attention module of every decoder layer, in order (Llama-family layout, PEFT-wrapped or
    not)."""
    inner = getattr(model, "base_model", model)
    inner = getattr(inner, "model", inner)
    inner = getattr(inner, "model", inner) if not hasattr(inner, "layers") else inner
    return [layer.self_attn for layer in getattr(inner, "layers", [])]


@torch.inference_mode()
def next_token(
    model,
    tokenizer,
    ids: list[int],
    top_k: int = 10,
    layer: int | None = None,
    head: int | None = None,
    window: int | None = None,
) -> dict:
    """The model's next-token distribution after ``ids`` (top ``top_k``), and attention if ``layer`` is given.

    Attention is ``[query][key]`` for ``layer`` (0-based), averaged over heads when ``head`` is None, for the
    last ``window`` positions only (all when None; ``attention_offset`` says where they start). Only the
    requested layer's weights are kept: a forward hook takes them as that layer runs (eager attention, which
    every layer computes and drops again), so memory holds one [heads, T, T] matrix, never one per layer.
    """
    if not ids:
        raise ValueError("next_token needs at least one token")
    n_layers = model.config.num_hidden_layers
    n_heads = model.config.num_attention_heads
    if layer is not None and not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} out of range: the model has layers 0..{n_layers - 1}")
    if head is not None and not 0 <= head < n_heads:
        raise ValueError(f"head {head} out of range: the model has heads 0..{n_heads - 1}")
    device = next(model.parameters()).device
    x = torch.tensor([ids], device=device)
    w0 = 0 if window is None else max(0, len(ids) - window)
    if layer is None:
        out = model(input_ids=x, logits_to_keep=1)
        attn = None
    else:
        modules = _attention_modules(model)
        if len(modules) != n_layers:
            raise ValueError(
                "attention is shown for Llama-family models only (decoder layers with self_attn)"
            )
        kept: dict = {}

        def take(_mod, _args, output):
            w = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if w is not None:
                w = w[0].float()  # [heads, T, T]
                kept["a"] = (w.mean(0) if head is None else w[head])[w0:, w0:].clone()

        handle = modules[layer].register_forward_hook(take)
        try:
            with eager_attention(model):
                out = model(input_ids=x, logits_to_keep=1)
        finally:
            handle.remove()
        if "a" not in kept:
            raise ValueError("this model's attention layer returned no weights")
        attn = kept["a"].tolist()
    logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
    vals, idx = logp.topk(min(top_k, logp.shape[-1]))
    p = vals.exp()
    entropy = float(-(logp.exp() * logp).nan_to_num().sum())
    return {
        "tokens": token_strings(tokenizer, ids),
        "top": [
            {"id": int(i), "token": token_text(tokenizer, int(i)), "prob": float(q), "logprob": float(v)}
            for i, q, v in zip(idx.tolist(), p.tolist(), vals.tolist(), strict=True)
        ],
        "entropy": entropy,
        "n_layers": n_layers,
        "n_heads": n_heads,
        "layer": layer,
        "head": head,
        "attention": attn,
        "attention_offset": w0,
    }
