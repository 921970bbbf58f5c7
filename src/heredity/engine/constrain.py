"""Constrained decoding: a grammar turned into a logits mask at every sampling step, through llguidance.

A grammar is an llguidance grammar string (what ``SampleConfig.grammar`` holds, and so what a sampling step's
key holds); build one with ``json_schema``, ``regex`` or ``lark`` (a Lark grammar, which may embed JSON
schemas as ``%json {...}``). ``Constraint`` is one sequence's matcher: ``allowed(mask_row)`` fills which
tokens may come next, ``advance(token)`` consumes one. The engine was chosen by measurement
(``bench/grammar.py``): llguidance and xgrammar both cost well under 0.1% of a SmolLM2 decode step per token
on CPU; llguidance is one wheel with no dependencies (xgrammar pulls triton) and its Lark-with-``%json``
grammars are what tool calls need.
What this module does not know: prompts, models or sampling (``engine.sampling`` applies the mask).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from heredity.errors import HeredityError


def json_schema(schema: dict | str) -> str:
    """The grammar of JSON text that validates against ``schema`` (whitespace kept compact)."""
    import llguidance

    s = schema if isinstance(schema, str) else json.dumps(schema)
    return llguidance.LLMatcher.grammar_from_json_schema(s, defaults={"whitespace_flexible": False})


def regex(pattern: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_regex(pattern)


def lark(text: str) -> str:
    import llguidance

    return llguidance.LLMatcher.grammar_from_lark(text)


def _lltokenizer(tokenizer, n_vocab: int):
    """llguidance's view of a HF tokenizer (about 0.4 s to build for a 49k vocabulary: cached on the
    tokenizer)."""
    import llguidance.hf

    cached = getattr(tokenizer, "_heredity_llg", None)
    if cached is not None and cached[0] == n_vocab:
        return cached[1]
    try:
        lt = llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab)
    except (ValueError, TypeError) as e:
        raise HeredityError(f"constrained decoding needs a fast (tokenizers) tokenizer: {e}") from e
    object.__setattr__(tokenizer, "_heredity_llg", (n_vocab, lt))
    return lt


def check(tokenizer, grammar: str, n_vocab: int) -> None:
    """Raise a one-line HeredityError when ``grammar`` does not compile."""
    import llguidance

    err = llguidance.LLMatcher.validate_grammar(grammar, _lltokenizer(tokenizer, n_vocab))
    if err:
        raise HeredityError(f"the grammar does not compile: {err.splitlines()[0]}")


class Constraint:
    """One sequence's position in a grammar."""

    def __init__(self, tokenizer, grammar: str, n_vocab: int):
        import llguidance

        self.n_vocab = n_vocab
        self.m = llguidance.LLMatcher(_lltokenizer(tokenizer, n_vocab), grammar)
        if self.m.is_error():
            raise HeredityError(f"the grammar does not compile: {self.m.get_error().splitlines()[0]}")

    def allowed(self) -> torch.Tensor:
        """A bool tensor [n_vocab]: the tokens the grammar allows next."""
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

        bits = allocate_token_bitmask(1, self.n_vocab)
        fill_next_token_bitmask(self.m, bits, 0)
        words = bits[0].view(np.uint32)
        mask = (
            ((words[:, None] >> np.arange(32, dtype=np.uint32)) & 1).astype(bool).reshape(-1)[: self.n_vocab]
        )
        return torch.from_numpy(mask)

    def advance(self, token: int) -> None:
        if not self.m.consume_token(token):
            raise HeredityError(f"token {token} broke the grammar: {self.m.get_error()}")

    @property
    def done(self) -> bool:
        """Nothing but the end may follow (the grammar is complete)."""
        return self.m.is_stopped()

    @property
    def complete(self) -> bool:
        return self.m.is_accepting()
