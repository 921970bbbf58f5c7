"""The lab server under attack: a well-behaved client's time to first token while one hostile client fires
hostile and oversized requests at the same model.

    .venv/bin/python bench/attack.py [--duration 60] [--model tiny] [--out bench/results/attack.json]

Starts a real `heredity serve` (Uvicorn, loopback, an API key set, the model preloaded, every bound at its
default). A well-behaved client (127.0.0.1) streams short chat turns on a stored conversation in a loop, a new
conversation every few turns, honouring Retry-After. It is measured alone first (the peer: the same server
unattacked), then for ``--duration`` seconds while a hostile client (its requests from 127.0.0.2, its key
guesses from 127.0.0.3, so its lock-out does not end the rest of the attack) fires, concurrently: the heaviest
work its budget accepts and oversized work (64 prompts × n 8 × max_tokens 2048), echo scoring over the context
and over all of it with logprobs and max_tokens 0, cross-site POSTs (a foreign Origin, Sec-Fetch-Site:
cross-site), JSON sent as text/plain, bodies over 1 MB (with and without Content-Length), malformed JSON,
unknown fields, wrong API keys, requests that disconnect while uploading, while generating and while
streaming, two turns at once on one conversation, and schemathesis's negative data (every operation of the
server's OpenAPI schema, bodies that break it on purpose). At the deadline no new request goes out, and the
hostile requests in flight stay until the well-behaved client's last turn is answered (so a turn waiting for
them is not let off by their cancellation). ``--queue-flood`` adds 70 small seeded requests kept in flight
(not in the test). Reported: the well-behaved client's TTFT median and p95 unattacked and under attack, the
hostile requests by answer, 5xx on both sides, the server's RSS (/proc VmRSS) at the start and its peak, the
turns answered and found stored when read back, and the time the heaviest request the hostile budget takes
needs alone and under attack. ``--model tiny`` (the default) is the tests' 2-layer random Llama with a
256-token context; any name ``heredity serve`` accepts measures that model instead (SmolLM2 decodes about 190
tokens/s at batch 16 on the 2-core CPU of docs/benchmarks.md, so the 131,072 tokens of work one client may
hold are about 11 minutes). ``--server-args`` passes other bounds to the server (e.g.
``'--max-client-tokens 0'``, to see what the budget buys).

``run()`` is the scenario itself; tests/test_server_attack.py runs it for a shorter time
and asserts on its result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

GOOD_ADDR, HOSTILE_ADDR, GUESSER_ADDR = "127.0.0.1", "127.0.0.2", "127.0.0.3"
CLIENT_BUDGET = 131_072  # `heredity serve --max-client-tokens`, default
MAX_BODY = 1_000_000  # the server's cap on a request body
TURNS_PER_CONVERSATION = 4  # the tiny model's context is 256 tokens: a new conversation every few turns
FOREIGN = "https://evil.example"
# budget-filling requests kept in flight (each retried 4 times a second when refused): one is taken, the rest
# are refused while the budget holds, and all of them would queue, one budget each, without it
HEAVY_LOOPS = 8
FLOOD = 70  # --queue-flood: small seeded requests kept in flight (more than --max-queue, 64)

# what each hostile request may be answered (anything else is reported as unexpected); "dropped": the client
# left before an answer, "reset": the server closed the connection before the client finished sending
EXPECTED: dict[str, set] = {
    "budget-filling work": {200, 429},
    "oversized work (64 × n 8 × 2048)": {200, 413, 429},
    "echo over the context (logprobs, max_tokens 0)": {400},
    "echo of 64 full-context prompts (logprobs 20, max_tokens 0)": {200, 413, 429},
    "cross-site POST (foreign Origin)": {403},
    "cross-site DELETE (Sec-Fetch-Site)": {403},
    "JSON as text/plain": {415},
    "body over 1 MB": {413, "reset"},
    "chunked body over 1 MB": {413, "reset"},
    "malformed JSON": {422},
    "unknown field": {400},
    "wrong API key": {401, 429},
    "disconnect while uploading": {"dropped"},
    "disconnect while generating": {"dropped"},
    "disconnect while streaming": {"dropped", 429},
    "two turns at once on one conversation": {200, 409, 429},
    "schemathesis negative data": {"< 500"},
    f"queue flood ({FLOOD} in flight, each seeded: runs alone)": {200, 429},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((GOOD_ADDR, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """The resident set size of process ``pid`` in MB (VmRSS in /proc/PID/status); 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def p95(xs: list[float]) -> float:
    """The 95th percentile by nearest rank (the largest value for fewer than 20); nan for no values."""
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[max(0, math.ceil(0.95 * len(s)) - 1)]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


# ---- the well-behaved client -------------------------------------------------------------------------------


class WellBehaved:
    """Streams chat turns (8 new tokens, greedy) on stored conversations from 127.0.0.1, one at a time, until
    ``stop`` is set; honours 429 Retry-After (the wait counts in the turn's time to first token). Each turn is
    recorded in ``turns``: its phase, time to first token (the first chunk with content or a finish reason),
    status, whether it ended with [DONE] and where the server says it stored the answer."""

    def __init__(self, url: str, model: str, key: str | None, timeout: float = 300.0):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self.model = model
        self.turns: list[dict] = []
        self.phase = "unattacked"
        self.stop = threading.Event()
        self.conv: str | None = None
        self.history: list[dict] = []
        self.k = 0

    def _new_conversation(self) -> None:
        r = self.http.post("/api/conversations", json={"model": self.model, "title": "well-behaved"})
        r.raise_for_status()
        self.conv, self.history = r.json()["id"], []

    def turn(self) -> dict:
        """One streamed turn on the current conversation (a new one every TURNS_PER_CONVERSATION turns),
        recorded; a failure (an error answer or event, a broken stream) is recorded too, and the
        next turn starts over."""
        self.k += 1
        user = {"role": "user", "content": f"turn {self.k}"}
        messages = [*self.history, user]
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": 8,
            "temperature": 0,
            "stream": True,
            "conversation_id": self.conv,
        }
        rec = {
            "phase": self.phase,
            "conversation": self.conv,
            "user": user["content"],
            "status": None,
            "ttft": None,
            "total": None,
            "done": False,
            "stored_idx": None,
            "text": "",
            "retries": 0,
            "error": None,
        }
        t0 = time.perf_counter()
        try:
            if self.conv is None or len(self.history) >= 2 * TURNS_PER_CONVERSATION:
                self._new_conversation()
                messages = [user]
                body.update(messages=messages, conversation_id=self.conv)
                rec["conversation"] = self.conv
            while True:
                with self.http.stream("POST", "/v1/chat/completions", json=body) as r:
                    rec["status"] = r.status_code
                    if r.status_code == 429:
                        rec["retries"] += 1
                        r.read()
                        time.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    if r.status_code != 200:
                        rec["error"] = r.read().decode(errors="replace")[:300]
                        break
                    for line in r.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        data = line[6:]
                        if data == "[DONE]":
                            rec["done"] = True
                            break
                        obj = json.loads(data)
                        if "error" in obj:
                            rec["error"] = obj["error"]
                            break
                        if obj.get("heredity"):
                            rec["stored_idx"] = obj["heredity"]["message_idx"]
                        for ch in obj.get("choices", []):
                            content = (ch.get("delta") or {}).get("content")
                            if content:
                                rec["text"] += content
                            if rec["ttft"] is None and (content or ch.get("finish_reason")):
                                rec["ttft"] = time.perf_counter() - t0
                    break
        except (httpx.HTTPError, ValueError, KeyError) as e:
            rec["error"] = f"{type(e).__name__}: {e}"
        rec["total"] = time.perf_counter() - t0
        rec["answered"] = rec["done"] and rec["error"] is None and rec["stored_idx"] is not None
        if rec["answered"]:
            self.history = [*messages, {"role": "assistant", "content": rec["text"]}]
        else:
            self.conv = None  # start over: what the server kept of this conversation is checked at the end
        self.turns.append(rec)
        return rec

    def loop(self) -> None:
        while not self.stop.is_set():
            self.turn()

    def stored(self) -> dict:
        """Every answered turn read back through the API: counts of turns answered, found stored as answered
        (the user message and the answer at the index the server gave), and the mismatches."""
        convs: dict[str, list] = {}
        answered = [t for t in self.turns if t["answered"]]
        bad = []
        for t in answered:
            if t["conversation"] not in convs:
                r = self.http.get(f"/api/conversations/{t['conversation']}")
                convs[t["conversation"]] = r.json()["messages"] if r.status_code == 200 else []
            msgs, i = convs[t["conversation"]], t["stored_idx"]
            ok = (
                i < len(msgs)
                and i >= 1
                and msgs[i]["role"] == "assistant"
                and msgs[i]["content"] == t["text"]
                and msgs[i - 1]["content"] == t["user"]
            )
            if not ok:
                bad.append({"turn": t, "stored": msgs[max(0, i - 1) : i + 1]})
        return {"answered": len(answered), "stored": len(answered) - len(bad), "mismatches": bad[:5]}

    def close(self) -> None:
        self.http.close()


# ---- the hostile client ------------------------------------------------------------------------------------


class Hostile:
    """The hostile client: ``attack(deadline)`` runs every attack concurrently (asyncio, plus schemathesis in
    a thread) until ``deadline`` and counts each answer by kind in ``seen``; answers outside EXPECTED (or any
    5xx) are kept in ``unexpected``."""

    def __init__(
        self,
        url: str,
        model: str,
        key: str | None,
        context: int,
        eos: list[int],
        budget: int = CLIENT_BUDGET,
        flood: bool = False,
    ):
        self.flood = flood
        self.url, self.model, self.key, self.context, self.budget = url, model, key, context, budget
        self.no_eos = {str(e): -100 for e in eos}  # logit_bias: no answer ends early
        self.port = int(url.rsplit(":", 1)[1])
        self.auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.seen: dict[str, Counter] = defaultdict(Counter)
        self.unexpected: list[dict] = []
        self.pairs: list[list] = []  # status pairs of the two-turns-at-once attack
        self.pair_convs: list[tuple[str, list[int]]] = []
        self.took: dict[str, list[float]] = defaultdict(list)  # seconds to each 200, by kind
        self.fuzzer: threading.Thread | None = None

    def record(self, kind: str, status, body: str = "") -> None:
        self.seen[kind][status] += 1
        ok = EXPECTED[kind]
        fine = (isinstance(status, int) and status < 500) if "< 500" in ok else status in ok
        if not fine:
            self.unexpected.append({"kind": kind, "status": status, "body": body[:300]})

    def heavy(self) -> dict:
        """The heaviest /v1/completions body this client's budget takes: up to 64 prompts of 10 tokens, n 8,
        max_tokens 2048 (cut to the context), end-of-sequence banned (so every answer runs to its length)."""
        new = min(2048, self.context - 10)
        k = max(1, min(64, self.budget // (10 + 8 * new)))
        return {**self.oversized(), "prompt": [[65] * 10] * k}

    def oversized(self) -> dict:
        """64 prompts × n 8 × max_tokens 2048, end-of-sequence banned: over the budget wherever the context
        leaves room for 2048 new tokens (413); on a short context it is cut to what fits."""
        return {
            "model": self.model,
            "prompt": [[65] * 10] * 64,
            "n": 8,
            "max_tokens": 2048,
            "temperature": 0,
            "logit_bias": self.no_eos,
        }

    async def _post(self, c: httpx.AsyncClient, kind: str, path: str, **kw) -> int | str:
        t = time.monotonic()
        try:
            r = await c.post(path, **kw)
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            self.record(kind, "reset")
            return "reset"
        except httpx.HTTPError as e:
            self.record(kind, f"error {type(e).__name__}", str(e))
            return "error"
        self.record(kind, r.status_code, r.text if r.status_code >= 300 else "")
        if r.status_code == 200:
            self.took[kind].append(time.monotonic() - t)
        return r.status_code

    async def _loop(self, deadline: float, fn, pause: float = 0.05) -> None:
        while time.monotonic() < deadline:
            await fn()
            await asyncio.sleep(pause)

    async def attack(self, deadline: float, until=lambda: True, grace: float = 0.0) -> None:
        """Every attack at once until ``deadline``; then no new request, and the ones in flight are dropped
        once ``until()`` is true or ``grace`` seconds have passed (whichever comes first). An exception other
        than an HTTP error in one attack ends the attack and is raised."""
        transport = httpx.AsyncHTTPTransport(local_address=HOSTILE_ADDR)
        limits = httpx.Limits(max_connections=128, max_keepalive_connections=16)
        timeout = httpx.Timeout(None, connect=30)  # a request waits as long as the server holds it
        async with httpx.AsyncClient(
            base_url=self.url, transport=transport, headers=self.auth, timeout=timeout, limits=limits
        ) as c:
            chat = {"model": self.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
            ctx_prompt = [[65] * (self.context + 1)]
            full = [[65] * self.context] * 64

            async def heavy():
                await self._post(c, "budget-filling work", "/v1/completions", json=self.heavy())

            async def oversized():
                await self._post(
                    c, "oversized work (64 × n 8 × 2048)", "/v1/completions", json=self.oversized()
                )

            async def echo():
                await self._post(
                    c,
                    "echo over the context (logprobs, max_tokens 0)",
                    "/v1/completions",
                    json={
                        "model": self.model,
                        "prompt": ctx_prompt,
                        "echo": True,
                        "logprobs": 5,
                        "max_tokens": 0,
                    },
                )
                await self._post(
                    c,
                    "echo of 64 full-context prompts (logprobs 20, max_tokens 0)",
                    "/v1/completions",
                    json={"model": self.model, "prompt": full, "echo": True, "logprobs": 20, "max_tokens": 0},
                )

            async def web():
                await self._post(
                    c,
                    "cross-site POST (foreign Origin)",
                    "/v1/chat/completions",
                    json=chat,
                    headers={"Origin": FOREIGN},
                )
                r = await c.delete(
                    "/api/conversations/c-0123456789abcdef", headers={"Sec-Fetch-Site": "cross-site"}
                )
                self.record("cross-site DELETE (Sec-Fetch-Site)", r.status_code, r.text)
                await self._post(
                    c,
                    "JSON as text/plain",
                    "/v1/chat/completions",
                    content=json.dumps(chat),
                    headers={"Content-Type": "text/plain"},
                )
                await self._post(
                    c,
                    "malformed JSON",
                    "/v1/chat/completions",
                    content=b'{"model": "x", "messages": [',
                    headers={"Content-Type": "application/json"},
                )
                await self._post(
                    c, "unknown field", "/v1/chat/completions", json={**chat, "frobnicate": True}
                )

            blob = json.dumps(
                {**chat, "messages": [{"role": "user", "content": "x" * (MAX_BODY + 200_000)}]}
            ).encode()

            async def big_bodies():
                await self._post(
                    c,
                    "body over 1 MB",
                    "/v1/chat/completions",
                    content=blob,
                    headers={"Content-Type": "application/json"},
                )

                async def chunks():
                    for i in range(0, len(blob), 65536):
                        yield blob[i : i + 65536]

                await self._post(
                    c,
                    "chunked body over 1 MB",
                    "/v1/chat/completions",
                    content=chunks(),
                    headers={"Content-Type": "application/json"},
                )

            async def disconnects():
                await self._drop(json.dumps(self.heavy()).encode(), "disconnect while uploading", half=True)
                await self._drop(json.dumps(self.heavy()).encode(), "disconnect while generating", half=False)
                body = {
                    **chat,
                    "n": 8,
                    "max_tokens": 2048,
                    "temperature": 0,
                    "stream": True,
                    "logit_bias": self.no_eos,
                }
                try:
                    async with c.stream("POST", "/v1/chat/completions", json=body) as r:
                        if r.status_code != 200:
                            await r.aread()
                            self.record("disconnect while streaming", r.status_code, r.text)
                            return
                        async for line in r.aiter_lines():
                            if '"content":"' in line and '"content":""' not in line:
                                break  # leave after the first token
                    self.record("disconnect while streaming", "dropped")
                except httpx.HTTPError as e:
                    self.record("disconnect while streaming", f"error {type(e).__name__}")

            async def two_turns():
                r = await c.post("/api/conversations", json={"model": self.model})
                if r.status_code != 201:
                    self.record("two turns at once on one conversation", r.status_code, r.text)
                    return
                cid = r.json()["id"]
                body = {**chat, "conversation_id": cid}
                codes = await asyncio.gather(
                    *[
                        self._post(
                            c, "two turns at once on one conversation", "/v1/chat/completions", json=body
                        )
                        for _ in range(2)
                    ]
                )
                self.pairs.append(sorted(codes, key=str))
                self.pair_convs.append((cid, list(codes)))

            async def guess_keys():
                if not self.key:
                    return
                t = httpx.AsyncHTTPTransport(local_address=GUESSER_ADDR)
                async with httpx.AsyncClient(base_url=self.url, transport=t, timeout=60) as g:
                    while time.monotonic() < deadline:
                        r = await g.get(
                            "/v1/models", headers={"Authorization": f"Bearer {secrets.token_hex(16)}"}
                        )
                        self.record("wrong API key", r.status_code, r.text)
                        await asyncio.sleep(0.1)

            async def flood():
                kind = f"queue flood ({FLOOD} in flight, each seeded: runs alone)"
                body = {
                    "model": self.model,
                    "prompt": "hi",
                    "max_tokens": 2048,
                    "temperature": 0,
                    "logit_bias": self.no_eos,
                    "seed": secrets.randbelow(1 << 31),
                }
                if await self._post(c, kind, "/v1/completions", json=body) == 429:
                    await asyncio.sleep(0.05)

            self.fuzzer = threading.Thread(target=self.schemathesis, args=(deadline,), daemon=True)
            self.fuzzer.start()
            tasks = [
                asyncio.create_task(t)
                for t in (
                    *[self._loop(deadline, heavy, 0.25) for _ in range(HEAVY_LOOPS)],
                    self._loop(deadline, oversized, 0.25),
                    self._loop(deadline, echo, 0.1),
                    self._loop(deadline, web, 0.1),
                    self._loop(deadline, big_bodies, 0.2),
                    self._loop(deadline, disconnects, 0.1),
                    self._loop(deadline, two_turns, 0.2),
                    guess_keys(),
                    *[self._loop(deadline, flood, 0) for _ in range(FLOOD if self.flood else 0)],
                )
            ]
            # after the deadline no request is sent, and what is in flight stays until ``until()`` (or
            # ``grace`` more seconds): a turn that waits for the hostile work ahead of it is not let off
            # early by its cancellation
            while (
                not all(t.done() for t in tasks)
                and time.monotonic() < deadline + grace
                and not (time.monotonic() >= deadline and until())
            ):
                await asyncio.sleep(0.1)
            for t in tasks:  # then what is still in flight is dropped (the server cancels it)
                t.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            failed = [
                e for e in done if isinstance(e, BaseException) and not isinstance(e, asyncio.CancelledError)
            ]
            if failed:
                raise failed[0]

    async def _drop(self, body: bytes, kind: str, half: bool) -> None:
        """POST ``body`` to /v1/completions on a raw socket from the hostile address and close the connection
        without reading an answer: after half the body (``half``) or 0.3 s after all of it."""

        def send():
            with socket.socket() as s:
                s.bind((HOSTILE_ADDR, 0))
                s.connect((GOOD_ADDR, self.port))
                auth = "".join(f"{k}: {v}\r\n" for k, v in self.auth.items())
                s.sendall(
                    f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{auth}"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                )
                s.sendall(body[: len(body) // 2] if half else body)
                time.sleep(0.05 if half else 0.3)

        await asyncio.to_thread(send)
        self.record(kind, "dropped")

    def schemathesis(self, deadline: float) -> None:
        """schemathesis's negative data (GenerationMode.NEGATIVE: bodies, parameters and headers that break
        the schema on purpose) on every operation, sent from the hostile address with the
        key, until ``deadline``."""
        import requests
        import schemathesis
        from hypothesis import HealthCheck, given, seed, settings
        from schemathesis import GenerationMode

        class FromAddress(requests.adapters.HTTPAdapter):
            def init_poolmanager(self, *a, **k):
                k["source_address"] = (HOSTILE_ADDR, 0)
                super().init_poolmanager(*a, **k)

        session = requests.Session()
        session.mount("http://", FromAddress())
        doc = session.get(self.url + "/openapi.json", headers=self.auth, timeout=60).json()
        schema = schemathesis.openapi.from_dict(doc)
        ops = [r.ok() for r in schema.get_all_operations()]
        kind = "schemathesis negative data"
        for rnd in range(1_000_000):
            for i, op in enumerate(ops):
                if time.monotonic() >= deadline:
                    return

                @seed(rnd * 1000 + i)  # new cases each round (and no "reproduce with @seed" notes)
                @given(case=op.as_strategy(generation_mode=GenerationMode.NEGATIVE))
                @settings(
                    max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), database=None
                )
                def run(case):
                    if time.monotonic() >= deadline:
                        return
                    if isinstance(case.body, dict) and "model" in case.body and len(str(case.body)) % 2:
                        case.body["model"] = self.model  # half the bodies name the served model
                    try:
                        resp = case.call(base_url=self.url, session=session, headers=self.auth, timeout=300)
                    except requests.RequestException as e:
                        self.record(kind, f"error {type(e).__name__}")
                        return
                    self.record(kind, resp.status_code, resp.text if resp.status_code >= 500 else "")

                try:
                    run()
                except Exception as e:  # hypothesis refusing a strategy is no answer of the server's
                    self.seen[kind][f"not generated ({type(e).__name__})"] += 1


# ---- the scenario ------------------------------------------------------------------------------------------


def model_facts(path: Path) -> tuple[int, list[int]]:
    """(context length, end-of-sequence ids) of the model stored in directory ``path`` (config.json and
    generation_config.json, as the sampler reads them)."""
    cfg = json.loads((path / "config.json").read_text())
    eos: set[int] = set()
    for f in ("config.json", "generation_config.json"):
        if (path / f).exists():
            e = json.loads((path / f).read_text()).get("eos_token_id")
            eos.update(e if isinstance(e, list) else [] if e is None else [e])
    return cfg["max_position_embeddings"], sorted(eos)


def run(
    url: str,
    model: str,
    key: str | None,
    pid: int,
    model_dir: Path,
    duration: float = 60.0,
    baseline_turns: int = 20,
    flood: bool = False,
    grace: float = 600.0,
) -> dict:
    """The scenario against a running server (process ``pid``) serving ``model`` (stored in ``model_dir``):
    the well-behaved client alone for ``baseline_turns`` turns, the budget-filling request alone (timed), then
    ``duration`` seconds of attack while the well-behaved client keeps going. The hostile requests in flight
    at the deadline stay until the well-behaved client's last turn is answered (at most ``grace`` seconds
    more), then are dropped. Returns every measurement (see ``table``). ``flood`` adds a queue flood: FLOOD
    small seeded requests kept in flight (within the client's token budget, but each runs alone and together
    they fill the model's queue)."""
    context, eos = model_facts(model_dir)
    good = WellBehaved(url, model, key, timeout=duration + grace + 120)
    hostile = Hostile(url, model, key, context, eos, flood=flood)
    rss: list[tuple[float, float]] = []
    stop_rss = threading.Event()

    def sample_rss():
        while not stop_rss.is_set():
            rss.append((time.monotonic(), rss_mb(pid)))
            stop_rss.wait(0.25)

    rss_before = rss_mb(pid)
    try:
        good.turn()  # warm-up (not counted)
        good.turns.clear()
        for _ in range(baseline_turns):
            good.turn()
        t = time.perf_counter()
        transport = httpx.HTTPTransport(local_address=HOSTILE_ADDR)
        with httpx.Client(base_url=url, transport=transport, headers=hostile.auth, timeout=600) as h:
            r = h.post("/v1/completions", json=hostile.heavy())
        heavy_alone = {
            "status": r.status_code,
            "seconds": time.perf_counter() - t,
            "work_tokens": len(hostile.heavy()["prompt"]) * (10 + 8 * min(2048, context - 10)),
            "completion_tokens": r.json()["usage"]["completion_tokens"] if r.is_success else None,
        }
        rss_start = rss_mb(pid)
        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        good.phase = "attacked"
        worker = threading.Thread(target=good.loop, daemon=True)
        t_attack = time.monotonic()
        worker.start()
        deadline = threading.Timer(duration, good.stop.set)  # no turn starts after the deadline
        deadline.daemon = True
        deadline.start()
        asyncio.run(hostile.attack(t_attack + duration, until=lambda: not worker.is_alive(), grace=grace))
        attack_s = time.monotonic() - t_attack
        good.stop.set()
        worker.join(grace + 60)
        if hostile.fuzzer is not None:
            hostile.fuzzer.join(30)
        stop_rss.set()
        sampler.join(5)
        stored = good.stored()
        pair_stored = []
        for cid, codes in hostile.pair_convs:
            msgs = good.http.get(f"/api/conversations/{cid}").json()["messages"]
            pair_stored.append({"codes": codes, "stored_turns": sum(m["role"] == "assistant" for m in msgs)})
    finally:
        good.stop.set()
        stop_rss.set()
        good.close()

    def ttfts(phase):
        return [t["ttft"] for t in good.turns if t["phase"] == phase and t["ttft"] is not None]

    quiet, loud = ttfts("unattacked"), ttfts("attacked")
    good_5xx = [t for t in good.turns if (t["status"] or 0) >= 500 or "server_error" in str(t["error"])]
    hostile_5xx = sum(
        n for counts in hostile.seen.values() for s, n in counts.items() if isinstance(s, int) and s >= 500
    )
    return {
        "duration_s": duration,
        "attack_s": attack_s,
        "context": context,
        "heavy_alone": heavy_alone,
        "good": {
            phase: {
                "turns": sum(t["phase"] == phase for t in good.turns),
                "answered": sum(t["answered"] for t in good.turns if t["phase"] == phase),
                "ttft_median_s": median(x),
                "ttft_p95_s": p95(x),
                "ttft_max_s": max(x, default=math.nan),
                "retries_429": sum(t["retries"] for t in good.turns if t["phase"] == phase),
            }
            for phase, x in (("unattacked", quiet), ("attacked", loud))
        },
        "good_5xx": len(good_5xx),
        "good_failures": [t for t in good.turns if not t["answered"]][:5],
        "stored": stored,
        "hostile": {k: {str(s): n for s, n in v.items()} for k, v in hostile.seen.items()},
        "hostile_sent": sum(sum(v.values()) for v in hostile.seen.values()),
        "hostile_5xx": hostile_5xx,
        "unexpected": hostile.unexpected[:20],
        "n_unexpected": len(hostile.unexpected),
        "two_turn_pairs": hostile.pairs,
        "two_turn_stored": pair_stored,
        "hostile_200_seconds": {
            k: {"n": len(v), "median": median(v), "max": max(v)} for k, v in hostile.took.items()
        },
        "rss_mb": {
            "before_baseline": rss_before,
            "start": rss_start,
            "peak": max((m for _, m in rss), default=rss_start),
            "end": rss[-1][1] if rss else rss_start,
        },
        "turns": good.turns,
    }


def table(res: dict) -> str:
    """The result of ``run`` as markdown: the well-behaved client unattacked vs under attack, then the hostile
    requests by answer."""
    q, a = res["good"]["unattacked"], res["good"]["attacked"]
    ms = lambda s: f"{s * 1000:.0f} ms" if s == s else "—"  # noqa: E731
    ratio = lambda x, y: f"{y / x:.1f}×" if x and x == x and y == y else "—"  # noqa: E731
    h = res["heavy_alone"]
    under = res["hostile_200_seconds"].get("budget-filling work")
    took = (
        f"{under['median']:.1f} s median, {under['max']:.1f} s max ({under['n']} answered)"
        if under
        else "none answered"
    )
    lines = [
        "| well-behaved client (streamed chat turns, 8 tokens) | unattacked | "
        f"under attack ({res['attack_s']:.0f} s)"
        " | ratio |",
        "|---|---|---|---|",
        f"| time to first token, median | {ms(q['ttft_median_s'])} | {ms(a['ttft_median_s'])} | "
        f"{ratio(q['ttft_median_s'], a['ttft_median_s'])} |",
        f"| time to first token, p95 | {ms(q['ttft_p95_s'])} | {ms(a['ttft_p95_s'])} | "
        f"{ratio(q['ttft_p95_s'], a['ttft_p95_s'])} |",
        f"| time to first token, max | {ms(q['ttft_max_s'])} | {ms(a['ttft_max_s'])} | |",
        f"| turns answered / sent | {q['answered']} / {q['turns']} | {a['answered']} / {a['turns']} | |",
        f"| 429s it waited out (Retry-After) | {q['retries_429']} | {a['retries_429']} | |",
        "| answered turns found stored (read back) | "
        f"{res['stored']['stored']} / {res['stored']['answered']} "
        "(both phases) | | |",
        f"| 5xx answers | well-behaved {res['good_5xx']} | hostile {res['hostile_5xx']} | |",
        f"| server RSS | start {res['rss_mb']['start']:.0f} MB | peak {res['rss_mb']['peak']:.0f} MB | "
        f"+{res['rss_mb']['peak'] - res['rss_mb']['start']:.0f} MB |",
        f"| the heaviest request the hostile budget takes, alone ({h['work_tokens']} tokens of work) | "
        f"{h['seconds']:.1f} s ({h['status']}) | {took} | |",
        "",
        f"| hostile request ({res['hostile_sent']} in all) | answers |",
        "|---|---|",
    ]
    for kind in EXPECTED:
        counts = res["hostile"].get(kind, {})
        if kind.startswith("queue flood") and not counts:
            continue  # not asked for
        answers = ", ".join(f"{s} ×{n}" for s, n in sorted(counts.items(), key=lambda x: -x[1])) or "—"
        lines.append(f"| {kind} | {answers} |")
    if res["n_unexpected"]:
        lines.append(f"\n{res['n_unexpected']} unexpected answers, e.g. {res['unexpected'][:3]}")
    return "\n".join(lines)


# ---- the benchmark: its own server -------------------------------------------------------------------------


def tiny_model(store) -> str:
    """The tests' peaked tiny model (tests/conftest.py ``peaked_model``: tiny:micro, initializer_range 0.5,
    seed 0), as a stored artifact id."""
    key = {"preset": "micro", "name": "tiny-peaked", "initializer_range": 0.5}

    def init(ctx):
        import torch
        from transformers import LlamaForCausalLM

        from heredity.models.tiny import byte_tokenizer, tiny_config

        tok = byte_tokenizer()
        cfg = tiny_config(key["preset"], len(tok))
        cfg.initializer_range = key["initializer_range"]
        torch.manual_seed(0)
        out = ctx.output("model", "model", key["name"])
        LlamaForCausalLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)

    return store.run_step("init-tiny", key, [], init, seed=0)["model"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of attack")
    ap.add_argument(
        "--model", default="tiny", help="'tiny' (the tests' model) or a name heredity serve accepts"
    )
    ap.add_argument("--baseline-turns", type=int, default=20)
    ap.add_argument(
        "--queue-flood", action="store_true", help="add the queue flood to the attacks (not in the test)"
    )
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attack.json"))
    ap.add_argument("--home", help="HEREDITY_HOME to use (default: a temporary store)")
    ap.add_argument(
        "--server-args",
        default="",
        help="more `heredity serve` options, e.g. '--max-client-tokens 0' "
        "(the defaults are what is measured)",
    )
    args = ap.parse_args()
    from heredity.models import materialize
    from heredity.store import Store

    home = Path(args.home or tempfile.mkdtemp(prefix="heredity-attack-"))
    store = Store(home)
    aid = tiny_model(store) if args.model == "tiny" else materialize(args.model, store)
    context, _ = model_facts(store.get(aid).path)
    key = secrets.token_hex(16)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "HEREDITY_DB_URL"}
    env.update(HEREDITY_HOME=str(home), HEREDITY_API_KEY=key)
    log = open(home / "bench-attack.log", "w")  # noqa: SIM115
    cmd = [
        str(Path(sys.executable).parent / "heredity"),
        "serve",
        "--port",
        str(port),
        "--model",
        aid,
        *shlex.split(args.server_args),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{GOOD_ADDR}:{port}"
    try:
        t0 = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"server exited: {(home / 'bench-attack.log').read_text()[-1500:]}")
            try:
                httpx.get(url + "/login", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        print(
            f"model {args.model} = {aid} (context {context}); server up in {time.perf_counter() - t0:.1f} s; "
            f"attacking for {args.duration:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        res = run(
            url, aid, key, proc.pid, store.get(aid).path, args.duration, args.baseline_turns, args.queue_flood
        )
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    res.update(
        model=args.model,
        model_id=aid,
        cpus=os.cpu_count(),
        server_args=args.server_args,
        queue_flood=args.queue_flood,
    )
    print()
    print(
        f"`heredity serve` under attack on this CPU ({os.cpu_count()} cores), model {args.model} "
        f"(context {context}), "
        f"{'server options ' + repr(args.server_args) if args.server_args else 'every bound at its default'}"
        "; "
        "the peer is the same server unattacked, in the same run"
    )
    print()
    print(table(res))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"\nwrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
