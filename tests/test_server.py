"""The lab server over a real Uvicorn on loopback, driven by the official ``openai`` client and raw HTTP."""

import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import LiveServer
from openai import OpenAI

from heredity.engine import SampleConfig, sample
from heredity.store import Store, read_table

HELLO = [{"role": "user", "content": "hello there"}]


def test_models_lists_stored_and_bundled(client, server_home):
    ids = [m.id for m in client.models.list().data]
    assert server_home[1] in ids and "smollm2-135m-instruct" in ids


def test_chat_matches_the_engine_streamed_or_not(client, local):
    aid, model, tok = local
    want = sample(model, tok, [HELLO], SampleConfig(temperature=0, max_new_tokens=12), progress=False)[0]
    r = client.chat.completions.create(model=aid, messages=HELLO, temperature=0, max_tokens=12)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.text
    assert r.choices[0].finish_reason == want.finish_reason
    assert r.usage.completion_tokens == want.n_tokens and r.usage.prompt_tokens > 0
    chunks = list(
        client.chat.completions.create(
            model=aid,
            messages=HELLO,
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1, (
        "the answer must arrive in pieces"
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        want.finish_reason
    ]
    assert chunks[-1].usage.completion_tokens == want.n_tokens


def test_seed_n_and_stop(client, local):
    aid = local[0]
    kw = dict(model=aid, messages=HELLO, temperature=1.0, max_tokens=16)
    a = client.chat.completions.create(seed=5, n=3, **kw)
    b = client.chat.completions.create(seed=5, n=3, **kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1
    greedy = (
        client.chat.completions.create(model=aid, messages=HELLO, temperature=0, max_tokens=16)
        .choices[0]
        .message.content
    )
    stop = greedy[4:6]
    assert len(stop) == 2 and stop in greedy
    cut = client.chat.completions.create(model=aid, messages=HELLO, temperature=0, max_tokens=16, stop=[stop])
    assert (
        cut.choices[0].message.content == greedy[: greedy.find(stop)]
        and cut.choices[0].finish_reason == "stop"
    )
    streamed = client.chat.completions.create(
        model=aid, messages=HELLO, temperature=0, max_tokens=16, stop=stop, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        == greedy[: greedy.find(stop)]
    )


def test_completions_logprobs_are_the_models(client, local):
    aid, model, tok = local
    r = client.completions.create(model=aid, prompt="The owl", max_tokens=6, temperature=0, logprobs=3)
    ch = r.choices[0]
    lp = ch.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert all(
        t in ch.text or t.startswith("bytes:") for t in lp.tokens
    )  # part of a UTF-8 character: raw bytes
    # the same tokens, scored by one plain forward pass over prompt + completion
    gen = sample(
        model, tok, ["The owl"], SampleConfig(chat=False, temperature=0, max_new_tokens=6), progress=False
    )[0]
    assert gen.text == ch.text
    ids = tok("The owl", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        lsm = torch.log_softmax(model(torch.tensor([ids + gen.token_ids])).logits[0].float(), -1)
    want = [lsm[len(ids) - 1 + k, t].item() for k, t in enumerate(gen.token_ids)]
    assert lp.token_logprobs == pytest.approx(want, abs=1e-4)
    for chosen, top, tok_s in zip(lp.token_logprobs, lp.top_logprobs, lp.tokens, strict=True):
        assert len(top) == 3 and max(top.values()) == pytest.approx(chosen, abs=1e-5)  # greedy took the best
        assert top[tok_s] == pytest.approx(chosen, abs=1e-5)
    chat = client.chat.completions.create(
        model=aid, messages=HELLO, temperature=0, max_tokens=5, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 5 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)
    # streamed, every generated token's logprob arrives exactly once, in order (a token whose text is held
    # back, a partial character or a possible stop string, goes out with the next delta or the last chunk)
    streamed = [
        t
        for ch in client.chat.completions.create(
            model=aid, messages=HELLO, temperature=0, max_tokens=5, logprobs=True, top_logprobs=2, stream=True
        )
        if ch.choices and ch.choices[0].logprobs
        for t in ch.choices[0].logprobs.content
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=1e-5)


def test_concurrent_streams_never_mix(client, local, live_server):
    """8 clients stream at once (batched on the server); each gets exactly what it gets alone."""
    aid = local[0]
    prompts = [f"question {i}: {'why ' * i}" for i in range(8)]
    alone = [
        client.chat.completions.create(
            model=aid, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=10
        )
        .choices[0]
        .message.content
        for p in prompts
    ]
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(i):
        try:
            s = client.chat.completions.create(
                model=aid,
                messages=[{"role": "user", "content": prompts[i]}],
                temperature=0,
                max_tokens=10,
                stream=True,
            )
            got[i] = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
        except BaseException as e:  # collected: a thread's failure must fail the test
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert [got[i] for i in range(8)] == alone
    status = httpx.get(live_server.url + "/api/status").json()
    assert max(m["max_requests_per_run"] for m in status["models"]) > 1, (
        "concurrent requests should share a batch"
    )
    assert len(set(alone)) > 1


def _raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, data


@pytest.mark.parametrize(
    "body,status,param",
    [
        ({"temperature": 3.0}, 422, "temperature"),
        ({"top_p": 0}, 422, "top_p"),
        ({"max_tokens": 100_000}, 422, "max_tokens"),
        ({"n": 99}, 422, "n"),
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "user", "content": "x"}] * 65}, 422, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 16_001}]}, 422, "messages.0.content"),
        ({"messages": [{"role": "user", "content": "x" * 15_000}] * 4}, 413, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
        ({"model": "/etc/passwd"}, 404, "model"),
        ({"model": "../../heredity.db"}, 404, "model"),
        ({"model": "HuggingFaceTB/SmolLM2-135M"}, 404, "model"),
    ],
)
def test_limits_answer_4xx(live_server, server_home, body, status, param):
    req = {"model": server_home[1], "messages": HELLO, "max_tokens": 4, **body}
    before = len(Store(server_home[0]).list())
    r = httpx.post(live_server.url + "/v1/chat/completions", json=req, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["param"] == param
    assert len(Store(server_home[0]).list()) == before, "a rejected request must not import anything"


def test_body_over_the_cap_is_413(live_server, server_home):
    big = json.dumps({"model": server_home[1], "messages": HELLO, "user": "x" * 1_100_000}).encode()
    status, data = _raw(
        live_server.url, "POST", "/v1/chat/completions", big, {"Content-Type": "application/json"}
    )
    assert status == 413 and b"request_too_large" in data

    def chunks():  # no Content-Length: the server must count as it reads
        yield big[:500_000]
        yield big[500_000:]

    r = httpx.post(
        live_server.url + "/v1/chat/completions",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413


@pytest.mark.parametrize(
    "path",
    [
        "/artifacts/{aid}/files/../../heredity.db",
        "/artifacts/{aid}/files/%2e%2e/%2e%2e/heredity.db",
        "/artifacts/{aid}/files/..%2f..%2fheredity.db",
        "/artifacts/{aid}/files//etc/passwd",
        "/artifacts/..%2f..%2fheredity.db",
        "/api/artifacts/..%2F..%2Fheredity.db",
        "/api/lineage?root=../../heredity.db",
        "/static/../../heredity.db",
        "/static/%2e%2e/%2e%2e/store/db.py",
    ],
)
def test_path_traversal_is_rejected(live_server, server_home, path):
    status, data = _raw(live_server.url, "GET", path.format(aid=server_home[1]))
    assert 400 <= status < 500
    assert b"SQLite format" not in data and b"root:x:0:0" not in data and b"sqlalchemy" not in data


def test_artifact_files_and_pages_serve(live_server, server_home):
    aid = server_home[1]
    r = httpx.get(f"{live_server.url}/artifacts/{aid}/files/config.json")
    assert r.status_code == 200 and r.json()["model_type"] == "llama"
    d = httpx.get(f"{live_server.url}/api/artifacts/{aid}").json()
    assert d["step"]["op"] == "init-tiny" and any(f["path"] == "config.json" for f in d["files"])
    for page in ("/chat", "/explore", "/lineage", "/reports", f"/artifacts/{aid}", f"/lineage?root={aid}"):
        assert httpx.get(live_server.url + page).status_code == 200, page
    assert aid in httpx.get(live_server.url + "/lineage").text


def test_non_loopback_needs_a_key(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "HEREDITY_API_KEY"}
    env["HEREDITY_HOME"] = str(tmp_path)
    r = subprocess.run(
        [str(Path(sys.executable).parent / "heredity"), "serve", "--host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "HEREDITY_API_KEY" in r.stderr


def test_api_key_guards_every_route(server_home):
    home, aid = server_home
    srv = LiveServer(home, env={"HEREDITY_API_KEY": "s3cret-key-for-the-tests"})
    try:
        for path in (
            "/v1/models",
            "/api/conversations",
            f"/api/artifacts/{aid}",
            f"/artifacts/{aid}/files/config.json",
            "/chat",
            "/lineage",
            "/static/chat.js",
            "/openapi.json",
            "/docs",
        ):
            assert httpx.get(srv.url + path).status_code == 401, path
            assert httpx.get(srv.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401, (
                path
            )
        page = httpx.get(srv.url + "/chat", headers={"Accept": "text/html"})
        assert page.status_code == 401 and 'name="key"' in page.text
        assert (
            httpx.post(srv.url + "/v1/chat/completions", json={"model": aid, "messages": HELLO}).status_code
            == 401
        )
        good = OpenAI(base_url=srv.url + "/v1", api_key="s3cret-key-for-the-tests", max_retries=0)
        assert good.chat.completions.create(model=aid, messages=HELLO, max_tokens=3).choices
        with httpx.Client(base_url=srv.url) as browser:  # the login form sets a cookie the pages accept
            r = browser.post("/login", data={"key": "s3cret-key-for-the-tests", "next": "/lineage"})
            assert r.status_code == 303 and r.headers["location"] == "/lineage"
            assert browser.get("/lineage").status_code == 200
            assert browser.post("/login", data={"key": "nope"}).status_code == 401
    finally:
        srv.stop()


def test_feedback_export_lineage_and_restart(server_home, tmp_path):
    """Chat → thumbs and a better answer → export: datasets whose lineage is the conversations and the model;
    the conversations are still there after the server restarts."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(server_home[0], home, ignore=shutil.ignore_patterns("server-*.log"))
    aid = server_home[1]
    srv = LiveServer(home)
    try:
        api = httpx.Client(base_url=srv.url, timeout=60)
        assert api.post("/api/export", json={}).status_code == 409  # nothing rated yet: a clear error
        cid = api.post("/api/conversations", json={"model": aid, "system_prompt": "Be brief."}).json()["id"]
        oa = OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "name a bird"}]
        r1 = oa.chat.completions.create(
            model=aid, messages=msgs, max_tokens=8, extra_body={"conversation_id": cid}
        )
        assert r1.model_extra["heredity"] == {"conversation_id": cid, "message_idx": 1}
        msgs += [
            {"role": "assistant", "content": r1.choices[0].message.content},
            {"role": "user", "content": "another"},
        ]
        s = oa.chat.completions.create(
            model=aid, messages=msgs, max_tokens=8, stream=True, extra_body={"conversation_id": cid}
        )
        second = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
        conflict = api.post(
            "/v1/chat/completions",
            json={
                "model": aid,
                "messages": [{"role": "user", "content": "x"}],
                "conversation_id": cid,
                "max_tokens": 2,
            },
        )
        assert conflict.status_code == 409
        assert api.put(f"/api/conversations/{cid}/messages/1/feedback", json={"rating": 1}).status_code == 200
        assert (
            api.put(
                f"/api/conversations/{cid}/messages/3/feedback", json={"rating": -1, "better": "An owl."}
            ).status_code
            == 200
        )
        assert (
            api.put(f"/api/conversations/{cid}/messages/0/feedback", json={"rating": 1}).status_code == 400
        )  # a user turn
        assert api.put(f"/api/conversations/{cid}/messages/9/feedback", json={"rating": 1}).status_code == 404
        out = api.post("/api/export", json={"name": "fb"}).json()
        assert out["counts"] == {"conversations": 1, "sft": 2, "preferences": 1}
    finally:
        srv.stop()
    store = Store(home)
    step = store.step_of(out["preferences"])
    assert step.op == "feedback-data" and step.inputs == [out["conversations"], aid]
    assert store.step_of(out["conversations"]).inputs == [aid]
    prefs = read_table(store.path(out["preferences"])).to_pylist()
    assert prefs[0]["chosen"] == "An owl." and prefs[0]["rejected"] == second
    assert (
        prefs[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
        and prefs[0]["prompt"][-1]["content"] == "another"
    )
    sft = read_table(store.path(out["sft"])).to_pylist()
    assert [r["source"] for r in sft] == ["thumbs_up", "better_answer"]
    assert sft[0]["messages"][-1] == {"role": "assistant", "content": r1.choices[0].message.content}

    srv = LiveServer(home)  # restart: the conversation and its feedback are still there
    try:
        conv = httpx.get(f"{srv.url}/api/conversations/{cid}").json()
        assert [m["role"] for m in conv["messages"]] == ["user", "assistant", "user", "assistant"]
        assert conv["messages"][3]["content"] == second and conv["messages"][3]["better"] == "An owl."
        assert [m["rating"] for m in conv["messages"]] == [0, 1, 0, -1]
        assert cid in [c["id"] for c in httpx.get(f"{srv.url}/api/conversations").json()["data"]]
    finally:
        srv.stop()


def test_explorer_top_k_and_attention(live_server, local):
    aid, model, tok = local
    r = httpx.post(
        live_server.url + "/api/explore",
        json={"model": aid, "prompt": "owl", "chat": False, "top_k": 5, "layer": 1, "head": 0},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    d = r.json()
    ids = tok("owl", add_special_tokens=False)["input_ids"]
    assert d["ids"] == ids and d["prompt_len"] == len(ids)
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([ids])).logits[0, -1], -1)
    top = p.topk(5)
    assert [c["id"] for c in d["top"]] == top.indices.tolist()
    assert [c["prob"] for c in d["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    att = d["attention"]
    assert len(att) == len(ids) and all(sum(row) == pytest.approx(1, abs=1e-3) for row in att)
    assert all(v == 0 for q, row in enumerate(att) for v in row[q + 1 :]), (
        "causal: no attention to later tokens"
    )
    nxt = httpx.post(
        live_server.url + "/api/explore",
        json={"model": aid, "prompt": "owl", "chat": False, "tokens": [d["top"][1]["id"]]},
        timeout=60,
    ).json()
    assert nxt["ids"] == ids + [d["top"][1]["id"]] and nxt["attention"] is None
    bad = httpx.post(live_server.url + "/api/explore", json={"model": aid, "prompt": "owl", "layer": 99})
    assert bad.status_code == 422


def test_port_in_use_is_a_one_line_error(live_server, tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "HEREDITY_API_KEY"}
    env["HEREDITY_HOME"] = str(tmp_path)
    r = subprocess.run(
        [str(Path(sys.executable).parent / "heredity"), "serve", "--port", str(live_server.port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--port" in r.stderr


def test_conversations_live_in_postgresql(postgres_url, tmp_path):
    """With HEREDITY_DB_URL on a real PostgreSQL server, a saved conversation survives a server restart."""
    from conftest import peaked_model

    home = tmp_path / "pg-home"
    aid = peaked_model(Store(home, db_url=postgres_url))
    turn = [{"role": "user", "content": "hello from postgres"}]
    srv = LiveServer(home, env={"HEREDITY_DB_URL": postgres_url})
    try:
        cid = httpx.post(srv.url + "/api/conversations", json={"model": aid}).json()["id"]
        r = httpx.post(
            srv.url + "/v1/chat/completions",
            json={"model": aid, "messages": turn, "max_tokens": 5, "conversation_id": cid},
            timeout=60,
        ).json()
        answer = r["choices"][0]["message"]["content"]
        assert (
            httpx.put(
                f"{srv.url}/api/conversations/{cid}/messages/1/feedback", json={"rating": -1}
            ).status_code
            == 200
        )
    finally:
        srv.stop()
    srv = LiveServer(home, env={"HEREDITY_DB_URL": postgres_url})
    try:
        conv = httpx.get(f"{srv.url}/api/conversations/{cid}").json()
        assert [(m["role"], m["content"], m["rating"]) for m in conv["messages"]] == [
            ("user", "hello from postgres", 0),
            ("assistant", answer, -1),
        ]
    finally:
        srv.stop()
    assert not (home / "heredity.db").exists(), "nothing went to SQLite"


def test_a_request_whose_client_left_stops_generating(local):
    """The runner stops a request's rows once the request side marks it cancelled (a
    client that disconnected)."""
    from heredity.server.runner import ModelHost

    _, model, tok = local
    host = ModelHost("test", model, tok)
    try:
        seen: list[int] = []

        def on_token(pi, si, t, lp):
            seen.append(t)
            if len(seen) == 3:
                job.cancelled = True

        job = host.generate(
            [HELLO], SampleConfig(temperature=0, max_new_tokens=40), seeded=True, on_token=on_token
        )
        comps = job.future.result(timeout=60)
        assert comps[0].finish_reason == "cancelled" and len(comps[0].token_ids) == 3
        import threading

        gate = threading.Event()
        busy = host.call(lambda m, t: gate.wait(60))  # hold the worker so the next job stays queued
        left = host.generate([HELLO], SampleConfig(temperature=0, max_new_tokens=5), seeded=False)
        left.cancelled = True  # its client left while it waited: it is never decoded
        gate.set()
        assert busy.result(timeout=60) and left.future.result(timeout=60) == []
    finally:
        host.stop()


def test_requests_with_other_sampling_parameters_share_the_running_batch(local):
    """Unseeded requests that differ in max_tokens, stop, n or logit_bias (as nearly every chat turn does: its
    max_tokens follows its prompt) decode in one generation run, each as it would alone; a seeded one runs by
    itself."""
    import threading

    from heredity.server.runner import ModelHost

    _, model, tok = local
    base = SampleConfig(temperature=0, max_new_tokens=8)
    cfgs = [
        base,
        base.model_copy(update={"max_new_tokens": 3, "n": 2}),
        base.model_copy(update={"logit_bias": {5: 100.0}}),
        base.model_copy(update={"stop": ["e"], "max_new_tokens": 12}),
    ]
    alone = [[c.token_ids for c in sample(model, tok, [HELLO], c, progress=False)] for c in cfgs]
    host = ModelHost("test", model, tok)
    try:
        gate = threading.Event()
        busy = host.call(lambda m, t: gate.wait(60))  # hold the worker: every job below is queued at once
        jobs = [host.generate([HELLO], c, seeded=False) for c in cfgs]
        seeded = host.generate([HELLO], base, seeded=True)
        gate.set()
        assert busy.result(timeout=60)
        got = [[c.token_ids for c in j.future.result(timeout=120)] for j in jobs]
        assert seeded.future.result(timeout=60)[0].token_ids == alone[0][0]
        assert got == alone
        assert alone[2][0][:1] == [5]  # the bias forced its token: the parameters were the job's own
        assert host.batches == [4, 1], host.batches
    finally:
        host.stop()


def test_queued_requests_take_turns_between_clients(local):
    """A client's queued requests put at most one of them ahead of another client's: three seeded requests
    (each runs alone) from one client, then one from another, run a0, b0, a1, a2; the queue is first in, first
    out within a client, and closing it still finishes every job queued before."""
    import threading

    from heredity.server.runner import ModelHost

    _, model, tok = local
    host = ModelHost("test", model, tok)
    order: list[str] = []
    try:
        gate = threading.Event()
        busy = host.call(lambda m, t: gate.wait(60))  # hold the worker: every job below is queued at once
        while not busy.running():
            time.sleep(0.01)
        cfg = SampleConfig(temperature=0, max_new_tokens=4)
        jobs = {f"a{i}": host.generate([HELLO], cfg, seeded=True, client="10.0.0.1") for i in range(3)}
        jobs["b0"] = host.generate([HELLO], cfg, seeded=True, client="10.0.0.2")
        for name, j in jobs.items():
            j.future.add_done_callback(lambda f, name=name: order.append(name))
        assert host.jobs.qsize() == 4
        gate.set()
        assert busy.result(timeout=60)
        for j in jobs.values():
            j.future.result(timeout=60)
        assert order == ["a0", "b0", "a1", "a2"], order
        last = host.generate([HELLO], cfg, seeded=True, client="10.0.0.3")
    finally:
        host.stop()
    assert last.future.result(timeout=60)[0].token_ids == jobs["a0"].future.result()[0].token_ids


def test_a_model_is_loaded_once_however_many_ask(server_home, monkeypatch):
    import threading as th

    from heredity.server import runner

    home, aid = server_home
    calls = []
    real = runner.load

    def counting_load(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(runner, "load", counting_load)
    pool = runner.ModelPool(Store(home))
    got = []
    threads = [th.Thread(target=lambda: got.append(pool.get(aid))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert calls == [aid] and len(got) == 6 and all(h is got[0] for h in got)
    finally:
        pool.close()
