"""The lab server under load: time to first token, streamed tokens/s, and 8 concurrent streaming clients.

    .venv/bin/python bench/serve.py [--model smollm2-135m-instruct] [--repeats 5] [--max-tokens 64]

Starts a real `heredity serve` (Uvicorn, loopback) with the model preloaded and talks to it with the
official `openai` client, streaming. The baseline is the same generation in-process (`engine.sample`,
same prompt and settings), measured in the same run, so the ratio is what HTTP + SSE + the server's
queue cost. Then 8 clients stream at once (different prompts, no seed: the server may batch them) and
are compared with the same 8 requests sent one after another. Medians over --repeats; one table.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from openai import OpenAI

from heredity.engine.sampling import SampleConfig, sample
from heredity.models import load, materialize
from heredity.store import Store

PROMPTS = [
    "Write a short poem about owls.",
    "Explain what a neural network is to a child.",
    "Give three tips for learning to cook.",
    "Describe the ocean at night.",
    "Why is the sky blue?",
    "Tell a story about a brave mouse.",
    "What makes a good friend?",
    "List some facts about the moon.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# a schema whose string field lets the answer run to max_tokens, so constrained and free
# answers have equal lengths
FREE_TEXT = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    },
}


def stream_once(
    client: OpenAI, model: str, prompt: str, max_tokens: int, temperature: float, seed: int | None, **extra
) -> dict:
    t0 = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    for c in client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        stream_options={"include_usage": True},
        **extra,
    ):
        if c.choices and c.choices[0].delta.content:
            chunks += 1
            if first is None:
                first = time.perf_counter()
        if c.usage:
            usage = c.usage
    end = time.perf_counter()
    n = usage.completion_tokens
    return {
        "ttft": first - t0,
        "total": end - t0,
        "tokens": n,
        "tps": (n - 1) / (end - first) if n > 1 else 0.0,
        "chunks": chunks,
    }


def local_once(model, tok, prompt: str, max_tokens: int, grammar: str | None = None) -> dict:
    t0 = time.perf_counter()
    first = []
    cfg = SampleConfig(temperature=0, max_new_tokens=max_tokens, batch_size=1, grammar=grammar)
    c = sample(
        model,
        tok,
        [prompt],
        cfg,
        progress=False,
        on_token=lambda *a: first or first.append(time.perf_counter()),
    )[0]
    end = time.perf_counter()
    n = c.n_tokens
    return {
        "ttft": first[0] - t0,
        "total": end - t0,
        "tokens": n,
        "tps": (n - 1) / (end - first[0]) if n > 1 else 0.0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--home", help="HEREDITY_HOME to use (default: a temporary store)")
    args = ap.parse_args()
    home = Path(args.home or os.environ.get("HEREDITY_HOME") or tempfile.mkdtemp(prefix="heredity-bench-"))
    store = Store(home)
    aid = materialize(args.model, store)
    print(f"model {args.model} = {aid}; store {home}", flush=True)

    model, tok = load(aid, store)
    local_once(model, tok, PROMPTS[0], 8)  # warm-up
    local = [local_once(model, tok, PROMPTS[0], args.max_tokens) for _ in range(args.repeats)]
    from heredity.engine import constrain

    grammar = constrain.json_schema(FREE_TEXT["json_schema"]["schema"])
    local_once(model, tok, PROMPTS[0], 8, grammar)  # warm-up (builds llguidance's tokenizer view once)
    local_g, local_f = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a noisy machine hits both alike
        local_f.append(local_once(model, tok, PROMPTS[1], args.max_tokens))
        local_g.append(local_once(model, tok, PROMPTS[1], args.max_tokens, grammar))
    del model

    port = free_port()
    env = {**os.environ, "HEREDITY_HOME": str(home)}
    env.pop("HEREDITY_API_KEY", None)
    log = open(home / "bench-serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "heredity"), "serve", "--port", str(port), "--model", aid],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        t_start = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {(home / 'bench-serve.log').read_text()[-1500:]}")
            try:
                httpx.get(url + "/api/status", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        startup = time.perf_counter() - t_start
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        stream_once(client, aid, PROMPTS[0], 8, 0, 0)  # warm-up
        served = [stream_once(client, aid, PROMPTS[0], args.max_tokens, 0, 0) for _ in range(args.repeats)]
        stream_once(client, aid, PROMPTS[1], 8, 0, 0, response_format=FREE_TEXT)  # warm-up
        served_f, served_g = [], []
        for _ in range(args.repeats):
            served_f.append(stream_once(client, aid, PROMPTS[1], args.max_tokens, 0, 0))
            served_g.append(
                stream_once(client, aid, PROMPTS[1], args.max_tokens, 0, 0, response_format=FREE_TEXT)
            )

        def sequential() -> float:
            t = time.perf_counter()
            for i in range(args.clients):
                stream_once(client, aid, PROMPTS[i % len(PROMPTS)], args.max_tokens, 0.7, None)
            return time.perf_counter() - t

        def concurrent() -> tuple[float, list[dict], list[BaseException]]:
            results: list[dict] = []
            errors: list[BaseException] = []

            def one(i):
                try:
                    results.append(
                        stream_once(client, aid, PROMPTS[i % len(PROMPTS)], args.max_tokens, 0.7, None)
                    )
                except BaseException as e:  # counted and reported
                    errors.append(e)

            threads = [threading.Thread(target=one, args=(i,)) for i in range(args.clients)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            return time.perf_counter() - t, results, errors

        seq_times, conc = [], []
        for _ in range(max(1, args.repeats // 2)):
            seq_times.append(sequential())
            conc.append(concurrent())
        status = httpx.get(url + "/api/status").json()
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()

    med = statistics.median
    errors = sum(len(c[2]) for c in conc)
    done = sum(len(c[1]) for c in conc)
    conc_wall = med([c[0] for c in conc])
    conc_tokens = med([sum(r["tokens"] for r in c[1]) for c in conc])
    conc_ttft = med([r["ttft"] for c in conc for r in c[1]])
    seq_wall = med(seq_times)
    print()
    print(
        f"SmolLM2 serving on this CPU ({os.cpu_count()} cores), {args.max_tokens} new tokens, "
        "greedy for the single stream; "
        f"medians of {args.repeats} (server start with the model preloaded: {startup:.1f} s)"
    )
    print()
    print("| measure | in-process `engine.sample` | `heredity serve` + openai client | ratio |")
    print("|---|---|---|---|")
    lt, st = med([r["ttft"] for r in local]), med([r["ttft"] for r in served])
    print(f"| time to first token | {lt * 1000:.0f} ms | {st * 1000:.0f} ms | {st / lt:.2f}× |")
    ltp, stp = med([r["tps"] for r in local]), med([r["tps"] for r in served])
    print(f"| streamed tokens/s after the first | {ltp:.1f} | {stp:.1f} | {stp / ltp:.2f}× |")
    print(
        f"| tokens per answer | {med([r['tokens'] for r in local]):.0f} "
        f"| {med([r['tokens'] for r in served]):.0f} | |"
    )
    print()

    def per_token_ms(runs):
        return med([(r["total"] - r["ttft"]) / max(1, r["tokens"] - 1) * 1000 for r in runs])

    print(
        "| constrained decoding (response_format json_schema, a free string field) "
        "| free | constrained | overhead per token |"
    )
    print("|---|---|---|---|")
    for label, f, g in (
        ("in-process `engine.sample`, ms/token", local_f, local_g),
        ("`heredity serve` streamed, ms/token", served_f, served_g),
    ):
        a, b = per_token_ms(f), per_token_ms(g)
        print(f"| {label} | {a:.1f} | {b:.1f} | {b - a:+.2f} ms ({b / a:.3f}×) |")
    print(
        f"| tokens per answer (median) | {med([r['tokens'] for r in local_f]):.0f} "
        f"| {med([r['tokens'] for r in local_g]):.0f} | |"
    )
    print()
    print(f"| {args.clients} streaming clients | one after another | all at once | ratio |")
    print("|---|---|---|---|")
    print(f"| wall time | {seq_wall:.2f} s | {conc_wall:.2f} s | {seq_wall / conc_wall:.2f}× faster |")
    print(f"| aggregate tokens/s | | {conc_tokens / conc_wall:.1f} | |")
    print(f"| time to first token (median client) | | {conc_ttft * 1000:.0f} ms | |")
    print(f"| requests completed / errors | | {done} / {errors} | |")
    print(
        "| most requests in one decode batch | | "
        f"{max(m['max_requests_per_run'] for m in status['models'])} | |"
    )
    if errors:
        print(f"errors: {[repr(e) for c in conc for e in c[2]][:3]}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
