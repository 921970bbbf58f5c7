"""The server's bounds on work (issue 33): pending work in tokens per model and per client, a non-streamed
request cancelled when its client disconnects, the context enforced on every path, echo scored in bounded
chunks, and text offsets computed incrementally (equal to decoding every prefix, in linear time)."""

import asyncio
import json
import random
import socket
import threading
import time

import httpx
import pytest
from conftest import free_port

from heredity.engine import SampleConfig, sample
from heredity.engine.explore import token_text
from heredity.engine.logprobs import token_logprobs
from heredity.engine.sampling import pad_id
from heredity.server.app import Settings, create_app
from heredity.server.openai_api import _Detok, _score_lm, _text_offsets
from heredity.store import Store


def _app(home, max_pending=None, max_client=None):
    app = create_app(Store(home), Settings(api_key=None))
    if max_pending is not None:
        app.state.pool.max_pending_tokens = max_pending
    if max_client is not None:
        app.state.pool.max_client_tokens = max_client
    return app


def _until(cond, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _cmpl(n_prompts: int, n: int, max_tokens: int, **extra) -> dict:
    """A /v1/completions body of ``n_prompts`` token-id prompts of 10 tokens: 10 + n × max_tokens tokens of
    work each."""
    return {"prompt": [[65] * 10] * n_prompts, "n": n, "max_tokens": max_tokens, "temperature": 0, **extra}


# ---- 1. pending work is bounded per model and per client ---------------------------------------------------


def test_work_not_requests_is_bounded_per_model_and_per_client(server_home):
    """While one client's 1620 tokens of work wait, its 410-token request is refused (429, the per-client
    bound) and its 26-token one accepted; a request over the bound by itself is refused at once (413, every
    path: echo scoring and max_tokens 0 too); another client gets the model's remaining room only; once the
    work is done the refused request goes through."""
    home, aid = server_home
    app = _app(home, max_pending=3000, max_client=2000)
    host = app.state.pool.get(aid)
    gate = threading.Event()
    busy = host.call(lambda m, t: gate.wait(120))  # hold the model: accepted requests stay pending

    async def main():
        a = httpx.AsyncClient(
            transport=httpx.ASGITransport(app, client=("10.0.0.1", 1000)),
            base_url="http://127.0.0.1",
            timeout=120,
        )
        b = httpx.AsyncClient(
            transport=httpx.ASGITransport(app, client=("10.0.0.2", 1000)),
            base_url="http://127.0.0.1",
            timeout=120,
        )

        async def post(c, body, path="/v1/completions"):
            return await c.post(path, json={"model": aid, **body})

        async def pending(want):
            deadline = time.time() + 30
            while host.pending_tokens != want:
                assert time.time() < deadline, (host.pending_tokens, want)
                await asyncio.sleep(0.02)

        big = asyncio.create_task(post(a, _cmpl(2, 4, 200)))  # 2 × (10 + 4 × 200) = 1620
        await pending(1620)
        medium = await post(a, _cmpl(1, 2, 200))  # 410: 2030 > 2000 for this client
        assert medium.status_code == 429 and medium.headers["retry-after"], medium.text
        err = medium.json()["error"]
        assert (
            err["code"] == "queue_full"
            and "--max-client-tokens" in err["message"]
            and "\n" not in err["message"]
        )
        assert "1620" in err["message"] and "2000" in err["message"]
        small = asyncio.create_task(post(a, _cmpl(1, 1, 16)))  # 26: fits
        await pending(1646)
        for body in (
            _cmpl(64, 8, 200),  # 103,040 tokens
            {"prompt": [[65] * 200] * 20, "max_tokens": 0, "echo": True, "logprobs": 1},
        ):  # scoring: 4000
            huge = await post(b, body)
            assert huge.status_code == 413, huge.text
            msg = huge.json()["error"]["message"]
            assert "bound of 2000" in msg and "--max-client-tokens" in msg and "\n" not in msg
        other = await post(b, _cmpl(2, 4, 200))  # 1620 more would make 3266 > 3000 for the model
        assert other.status_code == 429 and "--max-pending-tokens" in other.json()["error"]["message"]
        hi = [{"role": "user", "content": "hi"}]
        chat = await post(b, {"messages": hi, "max_tokens": 200, "n": 8}, "/v1/chat/completions")
        assert chat.status_code == 429  # chat counts its work too (prompt + 8 × 200)
        other_small = asyncio.create_task(post(b, _cmpl(1, 1, 16)))
        await pending(1672)
        gate.set()
        done = await asyncio.gather(big, small, other_small)
        assert [r.status_code for r in done] == [200, 200, 200], [r.text for r in done]
        assert len(done[0].json()["choices"]) == 8
        await pending(0)
        assert host.client_tokens == {}
        again = await post(a, _cmpl(1, 2, 200))  # the refused request, now that the work is done
        assert again.status_code == 200, again.text
        await a.aclose()
        await b.aclose()

    try:
        asyncio.run(main())
        assert busy.result(timeout=60)
    finally:
        gate.set()
        app.state.pool.close()


def test_a_seeded_request_costs_a_whole_batch_per_token(server_home):
    """A seeded request never shares a batch, so each of its tokens costs a batch's decode step: its work
    counts ``batch_size`` times (a flood of seeded requests cannot hold the model longer than its budget
    says); the same request unseeded counts once."""
    home, aid = server_home
    app = _app(home, max_pending=100_000, max_client=1000)
    host = app.state.pool.get(aid)
    gate = threading.Event()
    busy = host.call(lambda m, t: gate.wait(120))

    async def main():
        c = httpx.AsyncClient(
            transport=httpx.ASGITransport(app, client=("10.0.0.3", 1000)),
            base_url="http://127.0.0.1",
            timeout=120,
        )

        async def pending(want):
            deadline = time.time() + 30
            while host.pending_tokens != want:
                assert time.time() < deadline, (host.pending_tokens, want)
                await asyncio.sleep(0.02)

        plain = asyncio.create_task(c.post("/v1/completions", json={"model": aid, **_cmpl(1, 1, 16)}))
        await pending(26)
        seeded = asyncio.create_task(
            c.post("/v1/completions", json={"model": aid, **_cmpl(1, 1, 16, seed=3)})
        )
        await pending(26 + 26 * host.batch_size)
        over = await c.post(
            "/v1/completions", json={"model": aid, **_cmpl(1, 1, 60, seed=4)}
        )  # 70 × 16 > 1000
        assert over.status_code == 413 and "runs alone" in over.json()["error"]["message"], over.text
        gate.set()
        done = await asyncio.gather(plain, seeded)
        assert [r.status_code for r in done] == [200, 200]
        await c.aclose()

    try:
        asyncio.run(main())
        assert busy.result(timeout=60)
    finally:
        gate.set()
        app.state.pool.close()


def test_a_stream_holds_its_work_until_it_ends(server_home):
    """A streamed request's work is released when its stream ends, read to the end or dropped."""
    home, aid = server_home
    app = _app(home)
    host = app.state.pool.get(aid)

    async def main():
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://127.0.0.1", timeout=60
        ) as c:
            body = {"model": aid, "prompt": "The owl", "max_tokens": 20, "temperature": 0, "stream": True}
            async with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                lines = [line async for line in r.aiter_lines() if line.startswith("data:")]
            assert lines[-1] == "data: [DONE]"
            r = await c.post(
                "/v1/chat/completions",
                json={"model": aid, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
            )
            assert r.status_code == 200

    try:
        asyncio.run(main())
        _until(lambda: host.pending_tokens == 0, what="the work to be released")
        assert host.client_tokens == {}
    finally:
        app.state.pool.close()


# ---- 2. a non-streamed request whose client disconnects is cancelled ---------------------------------------


class _Served:
    """An app on a real Uvicorn in a thread of this process (so the test reaches the app's model host)."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        _until(lambda: self.server.started, what="uvicorn to start")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


def _send_and_drop(port: int, body: dict, after) -> None:
    """POST ``body`` to /v1/completions on a raw socket, wait until ``after()`` says so, then close the
    connection without reading the answer (a client that went away)."""
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        _until(after, what="the request to reach the model")


def test_a_client_that_disconnects_cancels_its_non_streamed_request(server_home, monkeypatch):
    """A non-streamed request with a large max_tokens whose client leaves mid-generation stops within a second
    or so (its rows end "cancelled"), one that leaves while queued never runs, and the model
    is free for the next."""
    from heredity.engine import fastdecode

    home, aid = server_home
    app = _app(home)
    srv = _Served(app)
    host = app.state.pool.get(aid)
    steps = []
    real_forward, real_step = host.model.forward, fastdecode.FastDecoder.step

    def slow(real):  # the tiny model decodes in microseconds: 20 ms a step leaves time to disconnect
        def run(*a, **k):
            steps.append(time.time())
            time.sleep(0.02)
            return real(*a, **k)

        return run

    monkeypatch.setattr(fastdecode.FastDecoder, "step", slow(real_step))  # the one-token steps on CPU

    jobs = []
    real_generate = host.generate

    def recording_generate(*a, **k):
        jobs.append(real_generate(*a, **k))
        return jobs[-1]

    host.model.forward, host.generate = slow(real_forward), recording_generate
    try:
        body = {"model": aid, "prompt": "The owl", "max_tokens": 240, "temperature": 0}
        _send_and_drop(srv.port, body, lambda: len(steps) >= 5)  # decoding has begun
        left = time.time()
        job = jobs[-1]
        _until(job.future.done, timeout=10, what="the abandoned job to stop")
        assert time.time() - left < 3, "the job should stop within a poll and a token of the disconnect"
        assert job.cancelled
        comps = job.future.result()
        assert comps[0].finish_reason == "cancelled" and len(comps[0].token_ids) < 240
        _until(lambda: host.pending_tokens == 0, timeout=5, what="the work to be released")

        gate = threading.Event()
        busy = host.call(lambda m, t: gate.wait(60))  # the next one waits in the queue when its client leaves
        _send_and_drop(srv.port, body, lambda: len(jobs) == 2)
        _until(lambda: jobs[1].cancelled, timeout=5, what="the queued job to be cancelled")
        before = len(steps)
        gate.set()
        assert busy.result(timeout=30)
        _until(jobs[1].future.done, timeout=10, what="the queued job to end")
        assert jobs[1].future.cancelled() or jobs[1].future.result() == []
        t0 = time.time()
        r = httpx.post(
            f"http://127.0.0.1:{srv.port}/v1/completions", json={**body, "max_tokens": 4}, timeout=30
        )
        assert r.status_code == 200 and time.time() - t0 < 5, r.text
        assert len(steps) - before <= 6, "the abandoned queued request must not be decoded"
    finally:
        host.model.forward, host.generate = real_forward, real_generate
        srv.stop()
        app.state.pool.close()


# ---- 3. context on every path, bounded scoring, incremental offsets ----------------------------------------


def test_over_context_prompts_are_refused_before_any_work(server_home):
    """tiny's context is 256: a 300-token prompt is a 400 with a one-line message on every path (echo scoring
    with max_tokens 0, plain max_tokens 0, generation, embeddings), and nothing reaches the model."""
    home, aid = server_home
    app = _app(home)
    host = app.state.pool.get(aid)
    calls = []
    host.call = lambda *a, **k: calls.append("call")
    host.generate = lambda *a, **k: calls.append("generate")
    long = [65] * 300
    try:

        async def main():
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://127.0.0.1"
            ) as c:
                for path, body, param in [
                    (
                        "/v1/completions",
                        {"prompt": [long] * 16, "max_tokens": 0, "echo": True, "logprobs": 5},
                        "prompt",
                    ),
                    ("/v1/completions", {"prompt": [[65] * 10, long], "max_tokens": 0}, "prompt"),
                    ("/v1/completions", {"prompt": long, "max_tokens": 5}, "prompt"),
                    (
                        "/v1/completions",
                        {"prompt": [65] * 256, "max_tokens": 5},
                        "prompt",
                    ),  # fills it: no room
                    ("/v1/embeddings", {"input": [long]}, "input"),
                ]:
                    r = await c.post(path, json={"model": aid, **body})
                    assert r.status_code == 400, (body, r.text)
                    err = r.json()["error"]
                    assert err["code"] == "context_length_exceeded" and err["param"] == param
                    assert "256" in err["message"] and "\n" not in err["message"]
                # a prompt that fits exactly can be echoed (no scoring asked: no model work)
                r = await c.post(
                    "/v1/completions",
                    json={"model": aid, "prompt": [65] * 256, "max_tokens": 0, "echo": True},
                )
                assert r.status_code == 200

        asyncio.run(main())
        assert calls == [] and host.pending_tokens == 0
    finally:
        app.state.pool.close()


def _old_echo(tok, ids, scored, gen):
    """The echo logprobs as the server computed them before issue 33: every prefix
    decoded whole (quadratic)."""
    seq = ids + [t for t, _ in gen]
    items = ([None] + list(scored) if ids else []) + [lp for _, lp in gen]
    return {
        "tokens": [token_text(tok, t) for t in seq],
        "token_logprobs": [None if x is None else x[0] for x in items],
        "top_logprobs": [None if x is None else {token_text(tok, i): v for i, v in x[1]} for x in items],
        "text_offset": [len(tok.decode(seq[:i], skip_special_tokens=True)) for i in range(len(seq))],
    }


def test_echo_with_logprobs_equals_the_old_answer(server_home, local):
    """Echo with logprobs (scored in chunks now, offsets incremental, formatted off the event loop) gives what
    the quadratic, whole-batch code gave: the same tokens, offsets and top tokens, the same numbers."""
    home, aid = server_home
    _, model, tok = local
    texts = ["The owl flies at night, café 🦉 ünï", "A cat", "日本語 and more text " * 6]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids.append(
        [tok.convert_tokens_to_ids("<|im_start|>")] + ids[1] + [0xC3 % 256, 65]
    )  # a special and a broken byte
    scored = token_logprobs(model, ids, pad_id(tok, model), top_k=3)
    app = _app(home)
    try:

        async def main():
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=60) as c:
                out = {}
                for max_tokens in (0, 3):
                    r = await c.post(
                        "/v1/completions",
                        json={
                            "model": aid,
                            "prompt": ids,
                            "max_tokens": max_tokens,
                            "echo": True,
                            "logprobs": 3,
                            "temperature": 0,
                            "n": 2,
                        },
                    )
                    assert r.status_code == 200, r.text
                    out[max_tokens] = r.json()
                return out

        out = asyncio.run(main())
    finally:
        app.state.pool.close()
    for max_tokens, body in out.items():
        choices = sorted(body["choices"], key=lambda c: c["index"])
        assert len(choices) == 2 * len(ids)
        for c in choices:
            pi = c["index"] // 2
            gen = []
            if (
                max_tokens
            ):  # greedy: what the engine generates alone (the peaked model is stable under batching)
                cfg = SampleConfig(chat=False, temperature=0, max_new_tokens=max_tokens)
                gen = [
                    (t, (0.0, [])) for t in sample(model, tok, [ids[pi]], cfg, progress=False)[0].token_ids
                ]
            want, lp, n = _old_echo(tok, ids[pi], scored[pi], gen), c["logprobs"], len(ids[pi])
            assert lp["tokens"] == want["tokens"] and len(lp["tokens"]) == n + len(gen)
            assert lp["text_offset"] == want["text_offset"]
            # fp32 in chunks vs the whole batch: a few ulps apart (AVX-512 kernels sum in another order)
            assert lp["token_logprobs"][:n] == pytest.approx(want["token_logprobs"][:n], abs=1e-5)
            for got, w in zip(lp["top_logprobs"][:n], want["top_logprobs"][:n], strict=True):
                assert (got is None) == (w is None)
                if w is not None:
                    assert list(got) == list(w) and list(got.values()) == pytest.approx(
                        list(w.values()), abs=1e-5
                    )


def test_scoring_in_chunks_equals_token_logprobs(local):
    """Chunked scoring (forward passes of a few positions' worth, logits a few positions at a time) gives the
    engine's numbers and top tokens."""
    _, model, tok = local
    rng = random.Random(0)
    seqs = [[rng.randrange(256) for _ in range(rng.randrange(1, 200))] for _ in range(20)]
    pad = pad_id(tok, model)
    want = token_logprobs(model, seqs, pad, top_k=4)
    for pass_tokens, head_tokens in ((16_384, 512), (64, 7), (1, 1)):
        got = _score_lm(model, seqs, pad, 4, pass_tokens=pass_tokens, head_tokens=head_tokens)
        for g, w in zip(got, want, strict=True):
            assert len(g) == len(w)
            # fp32 in other chunk shapes: a few ulps of a log-prob near −10 (1.1e-5 seen on an AMD EPYC)
            assert [x[0] for x in g] == pytest.approx([x[0] for x in w], abs=5e-5)
            assert [[i for i, _ in x[1]] for x in g] == [[i for i, _ in x[1]] for x in w]
    with pytest.raises(Exception, match="client left"):
        _score_lm(model, seqs, pad, 4, stopped=lambda: True)


def _quadratic(tok, ids, before=()):
    return [len(tok.decode(list(before) + list(ids[:i]), skip_special_tokens=True)) for i in range(len(ids))]


def _tokenizers():
    """Tokenizers of the kinds served, built here: the byte tokenizer, a trained byte-level BPE (multi-byte
    tokens, partial characters), a Llama-2 style SentencePiece decoder (leading space, byte fallback),
    WordPiece with cleanup of spaces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from heredity.models.tiny import byte_tokenizer

    out = {"byte": byte_tokenizer()}
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["The owl flies at night; café, naïve, 日本語のテキスト, emoji 🦉🐈 and code() {}"] * 50
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    out["bpe"] = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for w in ["▁the", "▁cat", "s", "▁", "▁sat", "on", "▁mat", ".", "▁é", "ing", "▁日本", "▁▁", "a"]:
        vocab[w] = len(vocab)
    sp = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    sp.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    out["sentencepiece"] = PreTrainedTokenizerFast(
        tokenizer_object=sp, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    wv = {
        "[UNK]": 0,
        "[CLS]": 1,
        "[SEP]": 2,
        "hello": 3,
        "world": 4,
        ".": 5,
        ",": 6,
        "##s": 7,
        "'": 8,
        "s": 9,
        "n": 10,
        "##'t": 11,
        "do": 12,
        "?": 13,
    }
    wp = Tokenizer(models.WordPiece(vocab=wv, unk_token="[UNK]"))
    wp.decoder = decoders.WordPiece()
    out["wordpiece"] = PreTrainedTokenizerFast(
        tokenizer_object=wp,
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        clean_up_tokenization_spaces=True,
    )
    return out


def _samples(name, tok, rng):
    """Token sequences to check: real text, any ids, specials among them, runs of partial characters."""
    vocab = len(tok)
    if name == "sentencepiece":  # byte fallback runs that are UTF-8 (what text encodes to), words, specials
        words = list(range(259, vocab)) + [1, 2]
        chars = [[3 + b for b in ch.encode()] for ch in "é日本🦉ü"]
        seqs = []
        for _ in range(40):
            s = []
            while len(s) < 150:
                s += [rng.choice(words)] if rng.random() < 0.6 else rng.choice(chars)
            seqs.append(s)
        return seqs
    seqs = [[rng.randrange(vocab) for _ in range(rng.randrange(1, 200))] for _ in range(40)]
    partial = [i for i in range(vocab) if "\ufffd" in tok.decode([i])]
    if partial:
        seqs += [[rng.choice(partial + list(range(vocab))) for _ in range(200)] for _ in range(10)]
        seqs += [[rng.choice(partial) for _ in range(150)] for _ in range(5)]
    text = "The owl flies at night; café, naïve, 日本語のテキスト, emoji 🦉🐈 hello world . do n't"
    seqs.append(tok(text * 3, add_special_tokens=False)["input_ids"])
    return seqs


@pytest.mark.parametrize("name", ["byte", "bpe", "sentencepiece", "wordpiece"])
def test_incremental_offsets_equal_decoding_every_prefix(name):
    tok = _tokenizers()[name]
    rng = random.Random(1)
    for seq in _samples(name, tok, rng):
        assert _text_offsets(tok, seq) == _quadratic(tok, seq), seq
        d = _Detok(tok, seq)
        assert d.text == tok.decode(seq, skip_special_tokens=True) and len(d) == len(d.text)
        cut = len(seq) // 3
        assert _text_offsets(tok, seq[cut:], seq[:cut]) == _quadratic(tok, seq[cut:], seq[:cut])


def test_incremental_offsets_are_linear():
    """Offsets of 4,000 tokens decode a few tokens per token (every prefix whole would be 8 million)."""

    class Counting:
        def __init__(self, tok):
            self.tok, self.decoded = tok, 0

        def decode(self, ids, **kw):
            self.decoded += len(ids)
            return self.tok.decode(ids, **kw)

        def __getattr__(self, name):
            return getattr(self.tok, name)

    toks = _tokenizers()
    rng = random.Random(2)
    for name in ("byte", "bpe"):
        tok = Counting(toks[name])
        text = "The owl flies at night; café, naïve, 日本語のテキスト, emoji 🦉🐈 " * 200
        seq = tok.tok(text, add_special_tokens=False)["input_ids"][:4000]
        seq += [rng.randrange(len(tok.tok)) for _ in range(4000 - len(seq))]
        tok.decoded = 0
        _text_offsets(tok, seq)
        assert tok.decoded < 40 * len(seq), (name, tok.decoded)
        specials = [tok.tok.convert_tokens_to_ids(tok.tok.eos_token)] * 3000  # skipped: nothing to decode
        tok.decoded = 0
        assert _text_offsets(tok, seq[:100] + specials)[-1] == len(
            tok.tok.decode(seq[:100], skip_special_tokens=True)
        )
        assert tok.decoded < 40 * 100 + 3000
