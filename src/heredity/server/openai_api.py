"""OpenAI-compatible routes: GET /v1/models (and /v1/models/{id}), POST /v1/chat/completions, /v1/completions,
/v1/embeddings; and vLLM's POST /v1/load_lora_adapter and /v1/unload_lora_adapter (for adapters in this
store).

Answers follow OpenAI's shapes (``chat.completion``, ``chat.completion.chunk`` over server-sent events,
``text_completion`` with ``logprobs``) so the official ``openai`` client works unchanged. One extension:
a chat request may carry ``conversation_id`` (extra_body in the client) to save the turn and its answer
in a stored conversation; the answer's position comes back under ``heredity``.

Every route that runs a model checks the prompts against the model's context (scoring and echo included) and
reserves the request's work on the model (``ModelHost.reserve``: 413 for a request over the bound by itself,
429 with Retry-After while the model or this client has too much pending). A request not streamed is cancelled
when its client disconnects (polled while it waits). Decoding and formatting of long answers run on the
model's text thread, never on the event loop; text offsets come from incremental decoding (``_Detok``), linear
in the length.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from heredity.engine.explore import token_bytes, token_text
from heredity.engine.sampling import SampleConfig, render_prompt
from heredity.errors import HeredityError
from heredity.server.errors import ApiError
from heredity.server.runner import QueueFull, Reservation, TooMuchWork
from heredity.server.schemas import (
    DEFAULT_MAX_TOKENS,
    MAX_TOTAL_CHARS,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    LoadAdapter,
    UnloadAdapter,
)
from heredity.store.conversations import ConflictError, continues

router = APIRouter(prefix="/v1", tags=["openai"])


def _model_object(m: dict) -> dict:
    return {
        "id": m["id"],
        "object": "model",
        "created": m["created"],
        "owned_by": "heredity",
        "kind": m["kind"],
        "name": m["name"],
    }


@router.get("/models")
def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_object(m) for m in request.app.state.pool.listing()]}


@router.get("/models/{model_id:path}")
def get_model(model_id: str, request: Request) -> dict:
    from heredity.engine.retrieval import BUNDLED as EMBEDDER

    if model_id == EMBEDDER:
        return _model_object({"id": EMBEDDER, "created": 0, "kind": "embedding", "name": EMBEDDER})
    for m in request.app.state.pool.listing():
        if model_id in (m["id"], m["name"]):
            return _model_object(m)
    raise ApiError(404, f"no model {model_id!r}; GET /v1/models lists them", "model_not_found", param="model")


def _inputs(raw) -> list:
    """A request's prompt / input as a list: one text or one token-id list becomes a list of one."""
    from heredity.engine.sampling import is_token_ids

    return [raw] if isinstance(raw, str) or is_token_ids(raw) else list(raw)


def _token_ids(host, inputs: list, param: str) -> list[list[int]]:
    """Each input's token ids (texts tokenized without special tokens, ids used as given); 400 naming
    ``param`` for an id outside the model's vocabulary."""
    vocab = _vocab(host)
    bad = next((t for x in inputs if not isinstance(x, str) for t in x if t >= vocab), None)
    if bad is not None:
        raise ApiError(
            400,
            f"token id {bad} is outside the model's vocabulary (0..{vocab - 1})",
            "invalid_request_error",
            param=param,
        )
    return [
        x if not isinstance(x, str) else host.view(x, add_special_tokens=False)["input_ids"] for x in inputs
    ]


_EMBED_LOCK = threading.Lock()


def _embed_bundled(texts: list[str]):
    """The bundled MiniLM through sentence-transformers (one caller at a time: the model is shared)."""
    from heredity.engine.retrieval import embedder

    with _EMBED_LOCK:
        m = embedder()
        vecs = m.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
        n_tokens = sum(len(m.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts)
    return vecs, n_tokens


def _embed_lm(model, ids: list[list[int]], pad: int):
    """A causal LM's sentence embedding: the last hidden state, mean-pooled over each input's tokens,
    L2-normalized."""
    import torch

    from heredity.engine.logprobs import right_padded

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(ids), 16):
            x, att = right_padded(ids[i : i + 16], pad, device)
            h = model(input_ids=x, attention_mask=att, output_hidden_states=True).hidden_states[-1]
            m = att.unsqueeze(-1).to(h.dtype)
            v = (h * m).sum(1) / m.sum(1)
            out.append(torch.nn.functional.normalize(v.float(), dim=-1).cpu())
    return torch.cat(out).numpy()


@router.post("/load_lora_adapter", response_model=None)
async def load_lora_adapter(req: LoadAdapter, request: Request):
    """vLLM's runtime LoRA loading, for adapters in this server's store: afterwards ``lora_name`` names the
    adapter in every route (a client written for vLLM, such as
    ``heredity run self-training --set endpoint=...``, works unchanged). The answer is vLLM's: plain text on
    success, 400 when the name is taken."""
    from fastapi.responses import PlainTextResponse

    try:
        await asyncio.to_thread(
            request.app.state.pool.load_adapter, req.lora_name, req.lora_path, req.load_inplace
        )
    except ValueError as e:
        raise ApiError(400, str(e), "invalid_request_error", param="lora_name") from None
    except HeredityError as e:
        raise ApiError(404, str(e), "model_not_found", param="lora_path") from None
    return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")


@router.post("/unload_lora_adapter", response_model=None)
async def unload_lora_adapter(req: UnloadAdapter, request: Request):
    from fastapi.responses import PlainTextResponse

    try:
        request.app.state.pool.unload_adapter(req.lora_name)
    except HeredityError as e:
        raise ApiError(404, str(e), "model_not_found", param="lora_name") from None
    return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")


@router.post("/embeddings")
async def embeddings(req: EmbeddingRequest, request: Request) -> dict:
    """Text (or token ids, for a language model) → vectors: the bundled all-MiniLM-L6-v2, a stored sentence
    encoder (``engine.encoder.finetune_encoder``'s output, named by id, id prefix or name; normalized
    embeddings on the encoder's own thread), or a stored language model (mean-pooled last hidden state)."""
    import base64

    import numpy as np

    from heredity.engine.retrieval import BUNDLED as EMBEDDER
    from heredity.engine.sampling import pad_id

    inputs = _inputs(req.input)
    if any(x == "" for x in inputs):
        raise ApiError(400, "an input must not be empty", "invalid_request_error", param="input")
    pool = request.app.state.pool
    encoder = None if req.model == EMBEDDER else await asyncio.to_thread(pool.encoder_id, req.model)
    if req.model == EMBEDDER or encoder is not None:
        if not all(isinstance(x, str) for x in inputs):
            what = EMBEDDER if encoder is None else f"{req.model} (a sentence encoder)"
            raise ApiError(
                400,
                f"{what} takes text input; token ids are only for the stored language models",
                "invalid_request_error",
                param="input",
            )
        if encoder is None:
            vecs, n_tokens = await asyncio.to_thread(_embed_bundled, inputs)
            name = EMBEDDER
        else:
            try:
                host = await asyncio.to_thread(pool.encoder, encoder)
            except HeredityError as e:  # e.g. its files are missing from the store
                raise ApiError(404, str(e), "model_not_found", param="model") from None
            fut = host.embed(inputs)
            vecs, n_tokens = await _wait(request, fut, fut.cancel)
            name = req.model
    else:
        host = await host_for(request, req.model)
        ids = _token_ids(host, inputs, "input")
        if min(map(len, ids)) == 0:
            raise ApiError(400, "an input encodes to no tokens", "invalid_request_error", param="input")
        _room(host, max(map(len, ids)), 0, "input", "an input")
        n_tokens, name = sum(map(len, ids)), req.model
        pad = pad_id(host.view, host.model)
        res = _reserve(host, request, n_tokens, f"{len(ids)} input(s) of {n_tokens} tokens in all")
        try:
            fut = host.call(lambda m, t: _embed_lm(m, ids, pad))
            vecs = await _wait(request, fut, fut.cancel)
        finally:
            res.release()
    dim = int(vecs.shape[1])
    if req.dimensions is not None and req.dimensions != dim:
        raise ApiError(
            400,
            f"dimensions {req.dimensions}: {name} embeds in {dim} dimensions and this server does not "
            "truncate; omit dimensions",
            "invalid_request_error",
            param="dimensions",
        )

    def enc(v):
        v = np.asarray(v, dtype="<f4")
        return base64.b64encode(v.tobytes()).decode() if req.encoding_format == "base64" else v.tolist()

    return {
        "object": "list",
        "model": name,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        "data": [{"object": "embedding", "index": i, "embedding": enc(v)} for i, v in enumerate(vecs)],
    }


async def host_for(request: Request, name: str):
    """The loaded model a request names (loaded off the event loop), or 404; 429 when its queue is full
    (checked here, before a stream's 200 goes out)."""
    try:
        host = await asyncio.to_thread(request.app.state.pool.get, name)
    except HeredityError as e:
        raise ApiError(404, str(e), "model_not_found", param="model") from None
    host.check_room()
    return host


def _room(host, longest: int, asked: int, param: str, what: str = "a prompt") -> int:
    """max_new_tokens for prompts of up to ``longest`` tokens: what was asked, cut to what the context leaves;
    0 when nothing is asked (scoring only, embeddings). 400 when a prompt is over the model's context, on
    every path (the model cannot score what it cannot see whole), or fills it when tokens are asked for."""
    ctx = host.context
    if ctx is not None and longest > ctx:
        raise ApiError(
            400,
            f"{what} has {longest} tokens and the model's context is {ctx}; shorten it",
            "context_length_exceeded",
            param=param,
        )
    if not asked:
        return 0
    room = (ctx or 1 << 30) - longest
    if room < 1:
        raise ApiError(
            400,
            f"{what} has {longest} tokens and fills the model's context of {ctx}, leaving no room to "
            "generate; shorten it",
            "context_length_exceeded",
            param=param,
        )
    return min(asked, room)


def _client(request: Request) -> str | None:
    """Who a request's work is counted against, per client: its peer address (the server has one API key, so a
    key names no one client)."""
    return request.client.host if request.client else None


def _reserve(host, request: Request, cost: int, what: str, alone: bool = False) -> Reservation:
    """Hold ``cost`` tokens of work on ``host`` for this request (release it when the request ends): 413 for a
    request over the bound by itself, 429 (Retry-After) while the model or this client has too much pending.
    ``alone``: a seeded generation, which runs without sharing a batch (``ModelHost.reserve``)."""
    try:
        return host.reserve(cost, _client(request), what, alone=alone)
    except TooMuchWork as e:
        raise ApiError(413, str(e), "request_too_large") from None
    except QueueFull as e:
        raise ApiError(429, str(e), "queue_full") from None


DISCONNECT_POLL_S = 0.25  # how often a request that is not streamed asks whether its client is still there


def _client_gone() -> ApiError:
    return ApiError(499, "the client closed the connection before the answer was ready", "client_closed")


async def _wait(request: Request, fut, cancel: Callable[[], object]):
    """The result of ``fut`` (a job on a model's thread); when the client disconnects first (polled every
    DISCONNECT_POLL_S), ``cancel()`` stops the job and the request ends (499, which no one reads)."""
    waiter = asyncio.wrap_future(fut)
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S)
            if done:
                return waiter.result()
            if await request.is_disconnected():
                cancel()
                waiter.cancel()  # whatever the job ends with now is no one's to read
                raise _client_gone()
    except asyncio.CancelledError:
        cancel()
        waiter.cancel()
        raise


async def _complete(request: Request, host, prompts, cfg: SampleConfig, seeded: bool, top_logprobs) -> list:
    """Run a generation that is not streamed to its end; the job is cancelled when the client disconnects
    first (its rows stop at the next token, or it never starts)."""
    try:
        job = host.generate(prompts, cfg, seeded, top_logprobs, client=_client(request))
    except QueueFull as e:  # filled between host_for and here
        raise ApiError(429, str(e), "queue_full") from None

    def cancel():
        job.cancelled = True
        job.future.cancel()  # one still queued never starts

    try:
        return await _wait(request, job.future, cancel)
    except HeredityError as e:
        raise ApiError(400, str(e), "invalid_request_error") from None


async def _on_text_thread(host, fn: Callable):
    """``fn(tokenizer)`` on the model's text thread (decoding, formatting), awaited off the event loop."""
    return await asyncio.wrap_future(host.text(fn))


def _json(body) -> bytes:
    """A body as JSONResponse renders it (called on the text thread: a long echo's JSON is CPU work too)."""
    return json.dumps(body, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode(
        "utf-8"
    )


_TOKEN_SETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _token_sets(tok) -> tuple[frozenset[int], frozenset[int]]:
    """(the ids that ``decode(..., skip_special_tokens=True)`` leaves out: special added tokens, the ids of
    byte-fallback tokens ``<0xNN>``: SentencePiece decodes a run of them together), once per tokenizer."""
    try:
        return _TOKEN_SETS[tok]
    except (KeyError, TypeError):
        pass
    import re

    added = getattr(tok, "added_tokens_decoder", None) or {}
    skipped = frozenset(
        i
        for i in added
        if tok.decode([i], skip_special_tokens=True) == ""
        and tok.decode([i], skip_special_tokens=False) != ""
    )
    byte = re.compile(r"<0x[0-9A-Fa-f]{2}>")
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    out = skipped, frozenset(i for piece, i in vocab.items() if byte.fullmatch(piece))
    try:
        _TOKEN_SETS[tok] = out
    except TypeError:  # a tokenizer that takes no weak reference: computed each time
        pass
    return out


class _Detok:
    """The text of a growing token sequence, token by token, each step decoding a few tokens, not the whole
    prefix: ``push(t)`` gives ``len(tok.decode(ids, skip_special_tokens=True))`` of every token so far, and
    ``text`` that text.

    The text is final up to an anchor, a point where it ended in a whole character after a token that is not a
    byte-fallback one (a run of those decodes together); each step decodes the tokens from a window start, an
    earlier anchor ``CONTEXT`` or more tokens back (a decoder reads a token's neighbours: SentencePiece's
    leading space), and keeps what follows the anchor's text. Where the window's text does not continue the
    anchor's (a decoder that rewrote earlier text, as cleanup of spaces does), or the text has not ended in a
    whole character for ``WINDOW`` tokens, the prefix is decoded whole once; such whole decodes are bounded by
    a multiple of the length (past it the window's text is taken as it is). Equal to decoding every prefix
    whole for byte-level BPE (any ids), SentencePiece with byte fallback on text, WordPiece with cleanup
    (tests/test_server_budget.py)."""

    CONTEXT = 4
    WINDOW = 256

    def __init__(self, tok, ids=()):
        self.tok, self.ids = tok, []
        self.skip, self.bytes = _token_sets(tok)
        self.a = self.c = 0  # the anchor (the text of ids[:a] is final) and the window's start (c <= a)
        self.head: list[str] = [""]  # pieces whose join is the text of ids[:a]
        self.head_len = 0
        self.base = ""  # the text of ids[c:a]
        self.tail = ""  # the text after the anchor
        self.anchors: deque[int] = deque([0], maxlen=self.CONTEXT + 1)
        self.spent = 0  # tokens decoded by whole-prefix decodes
        for t in ids:
            self.push(t)

    def fork(self) -> _Detok:
        """An independent copy (a prompt's state, continued by each of its samples)."""
        new = object.__new__(_Detok)
        new.__dict__.update(self.__dict__)
        new.ids, new.head, new.anchors = (
            list(self.ids),
            list(self.head),
            deque(self.anchors, maxlen=self.CONTEXT + 1),
        )
        return new

    def _decode(self, ids) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def __len__(self) -> int:
        return self.head_len + len(self.tail)

    @property
    def text(self) -> str:
        if len(self.head) > 1:
            self.head = ["".join(self.head)]
        return self.head[0] + self.tail

    def push(self, t: int) -> int:
        """Add one token; the length of the text so far."""
        t = int(t)
        if t in self.skip:
            return len(self)
        self.ids.append(t)
        n = len(self.ids)
        window = self._decode(self.ids[self.c :])
        if window.startswith(self.base):
            self.tail = window[len(self.base) :]
        elif self.spent <= 8 * n + 4096:
            self._whole(n)
            return len(self)
        else:  # past the bound on whole decodes (ids built to defeat the window): the window's text as it is
            self.tail = window[len(self.base) :]
        if self.tail and not self.tail.endswith("\ufffd") and t not in self.bytes:
            self.head.append(self.tail)
            self.head_len += len(self.tail)
            self.tail = ""
            self.anchors.append(self.a)
            self.a = n
            self.c = max((m for m in self.anchors if n - m >= self.CONTEXT), default=self.anchors[0])
            self.base = self._decode(self.ids[self.c : n])
        elif n - self.c > self.WINDOW:
            if self.spent <= 8 * n + 4096:
                self._whole(n)
            else:
                self.head.append(self.tail)
                self.head_len += len(self.tail)
                self.tail = ""
                self._anchor(n)
        return len(self)

    def _whole(self, n: int) -> None:
        """Decode the prefix whole and anchor there."""
        full = self._decode(self.ids)
        self.spent += n
        self.head, self.head_len, self.tail = [full], len(full), ""
        self._anchor(n)

    def _anchor(self, n: int) -> None:
        self.a, self.c = n, max(0, n - self.CONTEXT)
        self.anchors.clear()
        self.anchors.append(self.c)
        self.base = self._decode(self.ids[self.c : n])


def _offsets(d: _Detok, ids) -> list[int]:
    """Each token's start in the text (its length before the token is pushed), pushing ``ids`` into ``d``."""
    out = []
    for t in ids:
        out.append(len(d))
        d.push(t)
    return out


def _text_offsets(tok, ids, before=()) -> list[int]:
    """``[len(tok.decode(before + ids[:i], skip_special_tokens=True)) for i in range(len(ids))]`` in linear
    time."""
    return _offsets(_Detok(tok, before), ids)


def _namer(tok) -> Callable[[int], str]:
    """``token_text`` with a cache (a long echo names the same ids many times)."""
    cache: dict[int, str] = {}

    def name(i: int) -> str:
        s = cache.get(i)
        if s is None:
            s = cache[i] = token_text(tok, i)
        return s

    return name


SCORE_TOKENS = 16_384  # positions in one scoring forward pass (rows × length; a longer sequence runs alone)
HEAD_TOKENS = 512  # positions whose logits over the whole vocabulary exist at once while scoring
PLAIN_HEADS = {"llama", "mistral", "qwen2", "qwen3", "gpt2"}  # logits = output embeddings(last hidden state)


class ScoringStopped(HeredityError):
    """A scoring job whose client left stops between passes."""


def _score_lm(
    model,
    seqs: list[list[int]],
    pad: int,
    top_k: int | None,
    stopped: Callable[[], bool] = lambda: False,
    pass_tokens: int = SCORE_TOKENS,
    head_tokens: int = HEAD_TOKENS,
) -> list:
    """``engine.logprobs.token_logprobs`` (the same numbers: the same batches of up to 16, longest first,
    right-padded) in bounded memory: forward passes over at most ``pass_tokens`` positions, and for a model
    whose logits are its output embeddings of the last hidden state (``PLAIN_HEADS``) the projection onto the
    vocabulary applied ``head_tokens`` positions at a time, never [rows, length, vocab] at once. ``stopped()``
    is asked before each pass (ScoringStopped)."""
    import torch

    from heredity.engine.logprobs import right_padded, token_logprobs

    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    plain = getattr(model.config, "model_type", None) in PLAIN_HEADS
    base = getattr(model, model.base_model_prefix, None) if plain else None
    head = model.get_output_embeddings()
    device = next(model.parameters()).device
    out: dict[int, list] = {}
    k = 0
    while k < len(order):
        if stopped():
            raise ScoringStopped("scoring stopped: the client left")
        rows = max(1, min(16, pass_tokens // max(1, len(seqs[order[k]]))))
        idx, k = order[k : k + rows], k + rows
        batch = [seqs[i] for i in idx]
        if base is None or head is None:
            out.update(
                zip(idx, token_logprobs(model, batch, pad, top_k=top_k, batch_size=len(batch)), strict=True)
            )
            continue
        with torch.inference_mode():
            x, att = right_padded(batch, pad, device)
            h = base(input_ids=x, attention_mask=att).last_hidden_state
            for r, i in enumerate(idx):
                got: list = []
                for s in range(0, len(seqs[i]) - 1, head_tokens):
                    e = min(len(seqs[i]) - 1, s + head_tokens)
                    lp = torch.log_softmax(head(h[r, s:e]).float(), dim=-1)
                    chosen = lp.gather(-1, x[r, s + 1 : e + 1, None]).squeeze(-1).tolist()
                    if top_k:
                        tv, ti = lp.topk(top_k, dim=-1)
                        tops = [
                            list(zip(a, b, strict=True))
                            for a, b in zip(ti.tolist(), tv.tolist(), strict=True)
                        ]
                    else:
                        tops = [[] for _ in chosen]
                    got.extend(zip(chosen, tops, strict=True))
                out[i] = got
    return [out[i] for i in range(len(seqs))]


class _Stream:
    """Tokens from the model thread → text deltas for one request (one per choice), holding back partial
    UTF-8 characters and anything that may be the start of a stop string. Each choice's text is decoded
    incrementally (``_Detok``), not whole at every token."""

    def __init__(self, tokenizer, n: int, stop: list[str]):
        self.tok, self.stop = tokenizer, stop
        self.texts = [_Detok(tokenizer) for _ in range(n)]
        self.sent = [""] * n
        self.lps: list[list] = [[] for _ in range(n)]
        self.offs: list[list[int]] = [
            [] for _ in range(n)
        ]  # each logprob's token's start in the choice's text
        self.lp_sent = [
            0
        ] * n  # how many of lps went out: a token whose text is held back goes with the next delta

    def unsent_logprobs(self, si: int) -> tuple[list, list[int]]:
        """(the logprobs not sent yet, their tokens' text offsets), and mark them sent."""
        k = self.lp_sent[si]
        self.lp_sent[si] = len(self.lps[si])
        return self.lps[si][k:], self.offs[si][k:]

    def add(self, si: int, tok: int, lp) -> str:
        d = self.texts[si]
        if lp is not None:
            self.lps[si].append((tok, lp))
            self.offs[si].append(len(d))
        d.push(tok)
        text = d.text
        safe = len(text.rstrip("\ufffd"))
        for s in self.stop:
            if s in text:
                safe = min(safe, text.find(s))
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    safe = min(safe, len(text) - k)
                    break
        if safe <= len(self.sent[si]) or not text.startswith(self.sent[si]):
            return ""
        delta = text[len(self.sent[si]) : safe]
        self.sent[si] += delta
        return delta

    def rest(self, si: int, final: str) -> str:
        if final.startswith(self.sent[si]):
            delta = final[len(self.sent[si]) :]
            self.sent[si] = final
            return delta
        return ""


async def _run(host, prompts, cfg: SampleConfig, seeded: bool, top_logprobs, client: str | None = None):
    """Submit a streamed generation job; yield (prompt_index, sample_index, token_id, logprobs) per token
    while it runs, then ("done", completions). A stream whose client leaves is closed, and that cancels the
    job."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()

    def on_token(pi, si, tok, lp):
        loop.call_soon_threadsafe(q.put_nowait, (pi, si, tok, lp))

    try:
        job = host.generate(prompts, cfg, seeded, top_logprobs, on_token, client=client)
    except QueueFull as e:  # filled between host_for and here
        raise ApiError(429, str(e), "queue_full") from None
    fut = job.future
    fut.add_done_callback(lambda f: loop.call_soon_threadsafe(q.put_nowait, None))
    try:
        while True:
            item = await q.get()
            if item is None:
                break
            yield item
    finally:
        if not fut.done():  # the client went away (or the response was abandoned): stop generating for it
            job.cancelled = True
    exc = fut.exception()
    if exc is not None:
        if isinstance(exc, HeredityError):
            raise ApiError(400, str(exc), "invalid_request_error")
        raise exc
    yield ("done", fut.result())


def _trim(tok, lps: list, text: str) -> list:
    """The (token, logprob) pairs of a completion that fall inside its returned text (stop strings cut
    off)."""
    out, length = [], 0
    for t, lp in lps:
        if length >= len(text) and out:
            break
        out.append((t, lp))
        length += len(tok.decode([t], skip_special_tokens=True))
    return out


def _chat_logprobs(tok, lps: list) -> dict:
    def item(i, v):
        return {"token": token_text(tok, i), "logprob": v, "bytes": list(token_bytes(tok, i))}

    return {"content": [{**item(t, lp[0]), "top_logprobs": [item(i, v) for i, v in lp[1]]} for t, lp in lps]}


def _completion_logprobs(tok, lps: list, offsets: list[int] | None = None, name=None) -> dict:
    """OpenAI's completion logprobs over generated tokens; ``offsets``: each token's start in the completion's
    text (decoding the prefix, as with echo: one token's own decoding can be a partial character), computed
    from the tokens when not given (a stream passes those it kept, so offsets continue across chunks)."""
    return _echo_logprobs(tok, [], [], lps, offsets, name)


def _config(req, max_new: int, chat: bool, vocab: int) -> tuple[SampleConfig, bool]:
    bias = {int(k): float(v) for k, v in (req.logit_bias or {}).items()}
    bad = next((k for k in bias if k >= vocab), None)
    if bad is not None:
        raise ApiError(
            400,
            f"logit_bias names token {bad}, outside the model's vocabulary (0..{vocab - 1})",
            "invalid_request_error",
            param="logit_bias",
        )
    cfg = SampleConfig(
        n=req.n,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=req.top_p or 1.0,
        max_new_tokens=max_new,
        stop=req.stop or [],
        seed=req.seed or 0,
        chat=chat,
        batch_size=max(req.n, 1),
        logit_bias=bias,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
    )
    return cfg, req.seed is not None


def _tools(req) -> list[dict] | None:
    """The request's tools as OpenAI dicts; a strict function allows no properties beyond its schema's."""
    if not req.tools:
        return None
    out = []
    for t in req.tools:
        f = t.function.model_dump(exclude_none=True)
        params = f.get("parameters") or {"type": "object", "properties": {}}
        if t.function.strict:
            params = {**params, "additionalProperties": False}
        out.append({"type": "function", "function": {**f, "parameters": params}})
    return out


def _response_grammar(fmt, host) -> str | None:
    """response_format as a grammar: json_object → any JSON object, json_schema → JSON valid against the
    schema."""
    from heredity.engine import constrain

    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_schema" and fmt.json_schema is None:
        raise ApiError(
            400,
            "response_format json_schema needs a json_schema object (name, schema)",
            "invalid_request_error",
            param="response_format.json_schema",
        )
    schema = {"type": "object"} if fmt.type == "json_object" else (fmt.json_schema.schema_ or {})
    try:
        grammar = constrain.json_schema(schema)
        constrain.check(host.view, grammar, _vocab(host))
    except (HeredityError, ValueError, RuntimeError) as e:
        raise ApiError(
            400,
            f"response_format: the schema cannot be enforced: {str(e).splitlines()[0]}",
            "invalid_request_error",
            param="response_format",
        ) from None
    return grammar


def _vocab(host) -> int:
    return host.model.get_output_embeddings().weight.shape[0]


def _usage(n_prompt: int, comps) -> dict:
    n_out = sum(c.n_tokens for c in comps)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


@router.post("/chat/completions", response_model=None)
async def chat_completions(req: ChatRequest, request: Request):
    messages = [m.plain() for m in req.messages]
    if sum(len(m["content"]) for m in messages) > MAX_TOTAL_CHARS:
        raise ApiError(
            413,
            f"the messages hold more than {MAX_TOTAL_CHARS} characters in all; send a shorter history",
            "request_too_large",
            param="messages",
        )
    host = await host_for(request, req.model)
    convs = request.app.state.conversations
    if req.conversation_id:
        try:
            conv = convs.get(req.conversation_id)
        except KeyError:
            raise ApiError(
                404,
                f"no conversation {req.conversation_id}; create one with POST /api/conversations",
                "conversation_not_found",
                param="conversation_id",
            ) from None
        if not continues(conv.messages, messages):
            raise ApiError(
                409,
                f"the messages do not continue conversation {conv.id}; send its stored messages first",
                "conversation_conflict",
                param="messages",
            )
    if not getattr(host.view, "chat_template", None):
        raise ApiError(
            400,
            f"model {req.model} has no chat template; use POST /v1/completions with a plain prompt",
            "no_chat_template",
            param="model",
        )
    from heredity.engine import tools as tooling

    tools = _tools(req)
    if req.tool_choice is not None and req.tool_choice != "none" and not tools:
        raise ApiError(
            400,
            "tool_choice needs tools; send the tools the model may call",
            "invalid_request_error",
            param="tool_choice",
        )
    active = bool(tools) and req.tool_choice != "none"
    if active or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        text = tooling.render(host.view, messages, tools if active else None)
    else:
        text = render_prompt(host.view, messages, SampleConfig())
    prompt_ids = host.view(text, add_special_tokens=False)["input_ids"]
    n_prompt = len(prompt_ids)
    max_new = _room(
        host,
        n_prompt,
        req.max_completion_tokens or req.max_tokens or DEFAULT_MAX_TOKENS,
        "messages",
        "the conversation",
    )
    cfg, seeded = _config(req, max_new, chat=True, vocab=_vocab(host))
    grammar = _response_grammar(req.response_format, host)
    forced = active and (req.tool_choice == "required" or not isinstance(req.tool_choice, str | None))
    if forced:
        if grammar:
            raise ApiError(
                400,
                "response_format and a required tool call cannot both constrain the answer; drop one",
                "invalid_request_error",
                param="response_format",
            )
        name = None if isinstance(req.tool_choice, str) else req.tool_choice.function.name
        try:
            grammar = tooling.call_grammar(tools, name=name, parallel=req.parallel_tool_calls is not False)
        except HeredityError as e:
            raise ApiError(400, str(e), "invalid_request_error", param="tool_choice") from None
    if grammar:
        cfg = cfg.model_copy(update={"grammar": grammar})

    def answer(c) -> tuple[dict, str]:
        """(the message, finish_reason) of one completion: tool calls parsed out when tools are on."""
        if active:
            content, calls = tooling.parse_calls(c.text, tools)
            if calls:
                return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"
        return {"role": "assistant", "content": c.text}, c.finish_reason

    top = (req.top_logprobs or 0) if req.logprobs else None
    cid, created, model_name = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), req.model
    fingerprint = f"heredity-{host.id}"

    def save(answer: str, finish: str) -> dict | None:
        if not req.conversation_id:
            return None
        params = {
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": max_new,
            "seed": req.seed,
            "finish_reason": finish,
        }
        try:
            idx = convs.append(
                req.conversation_id,
                messages,
                {"role": "assistant", "content": answer, "model": host.id, "params": params},
            )
        except ConflictError as e:
            raise ApiError(409, str(e), "conversation_conflict") from None
        return {"conversation_id": req.conversation_id, "message_idx": idx}

    res = _reserve(
        host,
        request,
        n_prompt + req.n * max_new,
        f"a prompt of {n_prompt} tokens, n {req.n} × max_tokens {max_new}",
        alone=seeded,
    )
    if not req.stream:
        try:
            comps = await _complete(request, host, [prompt_ids], cfg, seeded, top)
        finally:
            res.release()

        def build(tok) -> list[dict]:  # on the text thread: tool-call parsing and log-probabilities
            choices = []
            for c in comps:
                msg, finish = answer(c)
                lps = (
                    _trim(tok, list(zip(c.token_ids, c.logprobs, strict=False)), c.text)
                    if top is not None
                    else None
                )
                choices.append(
                    {
                        "index": c.sample_index,
                        "message": msg,
                        "finish_reason": finish,
                        "logprobs": _chat_logprobs(tok, lps) if lps is not None else None,
                    }
                )
            return choices

        choices = await _on_text_thread(host, build)
        saved = save(comps[0].text, comps[0].finish_reason)
        body = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "system_fingerprint": fingerprint,
            "choices": choices,
            "usage": _usage(n_prompt, comps),
        }
        if saved:
            body["heredity"] = saved
        return JSONResponse(body)

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def chat_events() -> AsyncIterator[bytes]:
        # with tools on, text from a "<tool_call>" on is held back until the end shows whether it is a call
        st = _Stream(host.view, req.n, cfg.stop + ([tooling.OPEN] if active else []))
        base = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "system_fingerprint": fingerprint,
        }

        def chunk(i, delta, finish=None, lps=None):
            ch = {"index": i, "delta": delta, "logprobs": lps, "finish_reason": finish}
            return _sse({**base, "choices": [ch], **({"usage": None} if include_usage else {})})

        for i in range(req.n):
            yield chunk(i, {"role": "assistant", "content": ""})
        try:
            async for item in _run(host, [prompt_ids], cfg, seeded, top, _client(request)):
                if item[0] == "done":
                    comps = item[1]
                    break
                _, si, tok, lp = item
                delta = st.add(si, tok, lp)
                if delta:
                    lps = _chat_logprobs(host.view, st.unsent_logprobs(si)[0]) if top is not None else None
                    yield chunk(si, {"content": delta}, lps=lps)
        except ApiError as e:
            yield _sse({"error": e.body()["error"]})
            return
        for c in comps:
            msg, finish = answer(c)
            if msg.get("tool_calls"):  # OpenAI's deltas: id, type and name once, then the arguments
                for k, call in enumerate(msg["tool_calls"]):
                    yield chunk(
                        c.sample_index,
                        {
                            "tool_calls": [
                                {
                                    "index": k,
                                    "id": call["id"],
                                    "type": "function",
                                    "function": {"name": call["function"]["name"], "arguments": ""},
                                }
                            ]
                        },
                    )
                    yield chunk(
                        c.sample_index,
                        {
                            "tool_calls": [
                                {"index": k, "function": {"arguments": call["function"]["arguments"]}}
                            ]
                        },
                    )
                yield chunk(c.sample_index, {}, finish=finish)
                continue
            rest = st.rest(c.sample_index, c.text)
            left = st.unsent_logprobs(c.sample_index)[0]
            yield chunk(
                c.sample_index,
                {"content": rest} if rest else {},
                finish=finish,
                lps=_chat_logprobs(host.view, left) if top is not None and left else None,
            )
        try:
            saved = save(comps[0].text, comps[0].finish_reason)
        except ApiError as e:
            yield _sse({"error": e.body()["error"]})
            return
        if include_usage or saved:
            tail = {**base, "choices": []}
            if include_usage:
                tail["usage"] = _usage(n_prompt, comps)
            if saved:
                tail["heredity"] = saved
            yield _sse(tail)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        _guarded(chat_events(), res),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _guarded(events: AsyncIterator[bytes], res: Reservation) -> AsyncIterator[bytes]:
    """A stream's events, always ended by an error event or [DONE] (never cut off by an unexpected exception),
    and its work reservation released however it ends."""
    try:
        async for chunk in events:
            yield chunk
    except Exception:
        yield _internal_error_event()
    finally:
        res.release()


def _internal_error_event() -> bytes:
    """The last event of a stream that failed unexpectedly (logged with its traceback on the server)."""
    logging.getLogger(__name__).exception("a stream failed")
    return _sse(
        {
            "error": {
                "message": "the server failed while streaming this answer (see its log); retry the request",
                "type": "server_error",
                "param": None,
                "code": "internal_error",
            }
        }
    )


def _echo_logprobs(
    tok, ids: list[int], scored: list, gen: list, offsets: list[int] | None = None, name=None
) -> dict:
    """OpenAI's completion logprobs over prompt + generated tokens (echo): the first prompt token has no
    context (null); ``text_offset`` is each token's start in the echoed text, the length of the prefix before
    it decoded (``offsets`` when the caller has them, else computed incrementally: linear in the length).
    ``name``: a cached ``token_text`` to share across choices."""
    seq = ids + [t for t, _ in gen]
    items = ([None] + list(scored) if ids else []) + [lp for _, lp in gen]
    name = name or _namer(tok)
    offs = _text_offsets(tok, seq) if offsets is None else list(offsets)
    return {
        "tokens": [name(t) for t in seq],
        "token_logprobs": [None if x is None else x[0] for x in items],
        "top_logprobs": [None if x is None else {name(i): v for i, v in x[1]} for x in items],
        "text_offset": offs,
    }


@router.post("/completions", response_model=None)
async def completions(req: CompletionRequest, request: Request):
    from heredity.engine.sampling import Completion, pad_id

    if req.suffix:
        raise ApiError(
            400,
            "suffix (insertion) is not implemented by heredity serve; remove it",
            "unsupported_parameter",
            param="suffix",
        )
    prompts = _inputs(req.prompt)
    if sum(len(p) for p in prompts if isinstance(p, str)) > MAX_TOTAL_CHARS:
        raise ApiError(
            413,
            f"the prompts hold more than {MAX_TOTAL_CHARS} characters in all; send less",
            "request_too_large",
            param="prompt",
        )
    if any(p == "" for p in prompts):
        raise ApiError(422, "a prompt must not be empty", "invalid_request_error", param="prompt")
    asked = 16 if req.max_tokens is None else req.max_tokens
    if asked == 0 and req.stream:
        raise ApiError(
            400,
            "max_tokens 0 generates nothing to stream; send stream: false",
            "invalid_request_error",
            param="stream",
        )
    host = await host_for(request, req.model)
    ids = _token_ids(host, prompts, "prompt")
    if min(map(len, ids)) == 0:
        raise ApiError(422, "a prompt encodes to no tokens", "invalid_request_error", param="prompt")
    n_prompt = sum(map(len, ids))
    max_new = _room(host, max(map(len, ids)), asked, "prompt")  # every path: scoring and echo too
    cfg, seeded = _config(req, max(max_new, 1), chat=False, vocab=_vocab(host))
    top = req.logprobs
    scoring = req.echo and top is not None  # the prompt's own log-probabilities: one pass over every prompt
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    work = (n_prompt if scoring else 0) + (n_prompt + len(ids) * req.n * max_new if max_new else 0)
    what = (
        f"{len(ids)} prompt(s) of {n_prompt} tokens in all"
        + (", scored" if scoring else "")
        + (f", n {req.n} × max_tokens {max_new} each" if max_new else "")
    )
    res = _reserve(host, request, work, what, alone=seeded and bool(max_new))
    try:
        texts = await _on_text_thread(
            host,
            lambda t: [p if isinstance(p, str) else t.decode(p, skip_special_tokens=False) for p in prompts],
        )
        scored = None
        if scoring:
            pad, stop = pad_id(host.view, host.model), threading.Event()
            fut = host.call(lambda m, t: _score_lm(m, ids, pad, top, stop.is_set))
            scored = await _wait(request, fut, lambda: (stop.set(), fut.cancel()))

        def choices(tok, comps) -> list[dict]:  # on the text thread
            name, echoed, cache = _namer(tok), {}, {}
            out = []
            for c in comps:
                pi = c.prompt_index
                o = {
                    "index": pi * req.n + c.sample_index,
                    "text": (texts[pi] if req.echo else "") + c.text,
                    "logprobs": None,
                    "finish_reason": c.finish_reason,
                }
                if top is not None:
                    gen = (
                        _trim(tok, list(zip(c.token_ids, c.logprobs, strict=False)), c.text)
                        if c.logprobs
                        else []
                    )
                    if not req.echo:
                        o["logprobs"] = _completion_logprobs(tok, gen, name=name)
                    elif not gen and pi in cache:  # the same prompt scored: one answer for all its samples
                        o["logprobs"] = cache[pi]
                    else:
                        if pi not in echoed:  # the prompt's text, decoded once per prompt
                            d = _Detok(tok)
                            echoed[pi] = (d, _offsets(d, ids[pi]))
                        d, offs = echoed[pi]
                        offs = offs + _offsets(d.fork(), [t for t, _ in gen])
                        o["logprobs"] = _echo_logprobs(tok, ids[pi], scored[pi], gen, offs, name)
                        if not gen:
                            cache[pi] = o["logprobs"]
                out.append(o)
            return out

        def body(tok, comps) -> bytes:
            return _json(
                {
                    "id": cid,
                    "object": "text_completion",
                    "created": created,
                    "model": req.model,
                    "system_fingerprint": f"heredity-{host.id}",
                    "choices": choices(tok, comps),
                    "usage": _usage(n_prompt, comps),
                }
            )

        if max_new == 0:  # score only: nothing is generated
            comps = [
                Completion(i, k, "", [], "length", logprobs=[])
                for i in range(len(prompts))
                for k in range(req.n)
            ]
            res.release()
            return Response(
                await _on_text_thread(host, lambda t: body(t, comps)), media_type="application/json"
            )
        if not req.stream:
            comps = await _complete(request, host, ids, cfg, seeded, top)
            res.release()
            return Response(
                await _on_text_thread(host, lambda t: body(t, comps)), media_type="application/json"
            )
        echo_lps = None
        if scored is not None:
            echo_lps = await _on_text_thread(
                host,
                lambda t: [
                    _echo_logprobs(t, ids[pi], scored[pi], [], name=_namer(t)) for pi in range(len(ids))
                ],
            )
    except BaseException:
        res.release()
        raise

    async def completion_events() -> AsyncIterator[bytes]:
        streams = [_Stream(host.view, req.n, cfg.stop) for _ in ids]
        base = {"id": cid, "object": "text_completion", "created": created, "model": req.model}
        if req.echo:
            for pi, p in enumerate(texts):
                for si in range(req.n):
                    lps = echo_lps[pi] if echo_lps is not None else None
                    yield _sse(
                        {
                            **base,
                            "choices": [
                                {"index": pi * req.n + si, "text": p, "logprobs": lps, "finish_reason": None}
                            ],
                        }
                    )
        try:
            async for item in _run(host, ids, cfg, seeded, top, _client(request)):
                if item[0] == "done":
                    comps = item[1]
                    break
                pi, si, tok, lp = item
                st = streams[pi]
                delta = st.add(si, tok, lp)
                if delta:
                    lps = (
                        _completion_logprobs(host.view, *st.unsent_logprobs(si)) if top is not None else None
                    )
                    yield _sse(
                        {
                            **base,
                            "choices": [
                                {
                                    "index": pi * req.n + si,
                                    "text": delta,
                                    "logprobs": lps,
                                    "finish_reason": None,
                                }
                            ],
                        }
                    )
        except ApiError as e:
            yield _sse({"error": e.body()["error"]})
            return
        for c in comps:
            st = streams[c.prompt_index]
            rest = st.rest(c.sample_index, c.text)
            left, offs = st.unsent_logprobs(c.sample_index)
            lps = _completion_logprobs(host.view, left, offs) if top is not None and left else None
            yield _sse(
                {
                    **base,
                    "choices": [
                        {
                            "index": c.prompt_index * req.n + c.sample_index,
                            "text": rest,
                            "logprobs": lps,
                            "finish_reason": c.finish_reason,
                        }
                    ],
                }
            )
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        _guarded(completion_events(), res),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


ROUTES = [
    "GET /v1/models",
    "GET /v1/models/{id}",
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/embeddings",
    "POST /v1/load_lora_adapter",
    "POST /v1/unload_lora_adapter",
]


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def not_served(rest: str, request: Request):
    """Any other /v1 route (e.g. /v1/responses): a 404 that names what is served."""
    raise ApiError(
        404,
        f"{request.method} /v1/{rest} is not served by heredity serve; it serves {', '.join(ROUTES)}",
        "not_found",
    )
