"""CPU cost per token of a grammar engine's logits mask, on SmolLM2's tokenizer (49 152 tokens): llguidance vs
xgrammar, the two candidates for ``engine.sample``'s constrained decoding.

    .venv/bin/python bench/grammar.py [--reps 5]

For each grammar (a tool-call JSON schema, a strict number-list regex, any JSON object) a fixed valid output
is walked token by token: at each step the engine computes the allowed-token bitmask, then consumes the token.
Reported: the grammar's compile time and the median per-token time (mask + consume) over ``reps`` walks, and,
measured in the same run, one SmolLM2 decode step at batch 1 (HF forward on one new token with a KV cache), so
the overhead reads as a fraction of a step. outlines-core is not measured: it needs a hand-built byte-level
vocabulary map from a HF tokenizer (neither engine here does), which is the kind of code the
project does not hand-write.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

TOOL = {
    "type": "object",
    "properties": {
        "name": {"const": "get_weather"},
        "arguments": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
NUMBERS = r"(0|[1-9][0-9]{0,2})(, (0|[1-9][0-9]{0,2})){0,9}"
CASES = {
    "tool call (JSON schema)": (
        "json",
        TOOL,
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius", "days": 3}}',
    ),
    "number list (regex)": ("regex", NUMBERS, "482, 17, 903, 5, 640, 221, 78, 999, 3, 150"),
    "any JSON object": (
        "json",
        {"type": "object"},
        '{"animal": "owl", "count": 12, "tags": ["night", "bird"], "ok": true}',
    ),
}


def bench_llguidance(tok, kind, spec, ids, reps):
    import llguidance
    import llguidance.hf
    import numpy as np
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    t0 = time.perf_counter()
    lt = llguidance.hf.from_tokenizer(tok)
    tok_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    grammar = (
        llguidance.LLMatcher.grammar_from_json_schema(spec)
        if kind == "json"
        else llguidance.LLMatcher.grammar_from_regex(spec)
    )
    m = llguidance.LLMatcher(lt, grammar)
    assert not m.is_error(), m.get_error()
    compile_s = time.perf_counter() - t0
    mask = allocate_token_bitmask(1, lt.vocab_size)
    per = []
    for _ in range(reps):
        m = llguidance.LLMatcher(lt, grammar)
        t0 = time.perf_counter()
        for t in ids:
            fill_next_token_bitmask(m, mask, 0)
            assert (int(mask[0, t // 32]) >> (t % 32)) & 1, "the valid output's token was masked"
            assert m.consume_token(t), m.get_error()
        per.append((time.perf_counter() - t0) / len(ids))
        assert m.is_accepting()
    del np
    return tok_s, compile_s, statistics.median(per)


def bench_xgrammar(tok, vocab, kind, spec, ids, reps):
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info, max_threads=2)
    tok_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = (
        compiler.compile_json_schema(json.dumps(spec)) if kind == "json" else compiler.compile_regex(spec)
    )
    compile_s = time.perf_counter() - t0
    mask = xgr.allocate_token_bitmask(1, info.vocab_size)
    per = []
    for _ in range(reps):
        m = xgr.GrammarMatcher(compiled)
        t0 = time.perf_counter()
        for t in ids:
            m.fill_next_token_bitmask(mask, 0)
            assert (int(mask[0, t // 32]) >> (t % 32)) & 1, "the valid output's token was masked"
            assert m.accept_token(t)
        per.append((time.perf_counter() - t0) / len(ids))
    return tok_s, compile_s, statistics.median(per)


def decode_step_seconds(model, reps=20) -> float:
    import torch

    from heredity.engine.cache import prealloc_cache

    ids = torch.tensor([[1] * 64])
    with torch.inference_mode():
        times = []
        for _ in range(reps):
            c = prealloc_cache(model.config.num_hidden_layers, 66)
            model(input_ids=ids, cache=c, use_cache=True)
            t0 = time.perf_counter()
            model(input_ids=torch.tensor([[2]]), cache=c, use_cache=True)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    from heredity.models import load, materialize
    from heredity.store import Store

    store = Store()
    model, tok = load(materialize("smollm2-135m-instruct", store), store)
    vocab = model.get_output_embeddings().weight.shape[0]
    step = decode_step_seconds(model)
    print(
        "# SmolLM2-135M decode step (batch 1, HF forward, median of 20): "
        f"{step * 1e3:.1f} ms; vocabulary {vocab}"
    )
    print(
        "| grammar | engine | tokenizer setup s | compile ms | per-token µs (median) "
        "| share of a decode step |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for name, (kind, spec, text) in CASES.items():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        engines = ["llguidance"]
        try:
            import xgrammar  # noqa: F401  (a comparison only: not a dependency of heredity)

            engines.append("xgrammar")
        except ImportError:
            if name == next(iter(CASES)):
                print(
                    "# xgrammar not installed (pip install --no-deps xgrammar==0.2.8 apache-tvm-ffi): "
                    "its rows are skipped"
                )
        for engine in engines:
            if engine == "llguidance":
                tok_s, comp, per = bench_llguidance(tok, kind, spec, ids, args.reps)
            else:
                tok_s, comp, per = bench_xgrammar(tok, vocab, kind, spec, ids, args.reps)
            print(
                f"| {name} ({len(ids)} tokens) | {engine} | {tok_s:.2f} | {comp * 1e3:.1f} "
                f"| {per * 1e6:.0f} | "
                f"{100 * per / step:.3f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
