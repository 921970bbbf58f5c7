"""Models behind the server: each loaded once, shared by all requests, driven by one worker thread.

A ``ModelHost`` owns one loaded model and a queue of jobs that takes clients in turn (``FairQueue``); its
thread runs them one after another, so two requests never touch the model at the same time. Generation
requests that carry no seed share one continuous batch, each sequence decoded under its own request's sampling
parameters: while a batch decodes, each newly arrived request is admitted into it as soon as a slot is free
(up to ``batch_size`` sequences; a free slot goes to the request with the fewest sequences decoding, so a
request of many prompts cannot hold back the next), and each token is routed back to the request it belongs
to; a request finishes (its future resolves) when its own sequences do. A request with a seed always runs
alone, so its output depends on the seed only; the requests taken after it wait until it has run.

What a model has still to do is bounded twice: by requests (``max_queue`` waiting jobs) and by work, in tokens
(``reserve``: each request holds its prompt tokens plus ``n × max_tokens`` per prompt until it ends, at most
``max_pending_tokens`` per model and ``max_client_tokens`` per client), so one request of 64 prompts × n 8 ×
2048 tokens cannot hold a model for an hour behind a bound that counts it as one.
"""

from __future__ import annotations

import copy
import dataclasses
import queue
import random
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from heredity.engine.retrieval import is_encoder
from heredity.engine.sampling import Completion, Prompt, SampleConfig, TokenCallback, sample
from heredity.errors import HeredityError
from heredity.models import BUNDLED, load, materialize
from heredity.store import Store
from heredity.store.store import ID_PREFIX_RE, ID_RE


class ModelNotFound(HeredityError):
    pass


class QueueFull(HeredityError):
    """A model's queue holds ``max_queue`` waiting requests, or the work pending on it (or this client's)
    would go over its bound (the server answers 429 with Retry-After)."""


class TooMuchWork(HeredityError):
    """One request whose work alone is over a bound on pending work: it could never be taken (the server
    answers 413)."""


MAX_PENDING_TOKENS = 262_144  # tokens of work (prompt tokens + n × max_tokens per prompt) pending per model
MAX_CLIENT_TOKENS = 131_072  # of which one client (a peer address) may hold this many


class Reservation:
    """Work a request holds on a model until ``release()`` (idempotent; a reservation dropped without a
    release, e.g. with a stream that never started, is released when it is garbage-collected)."""

    def __init__(self, host: ModelHost, cost: int, client: str | None):
        self.host, self.cost, self.client, self.released = host, cost, client, False

    def release(self) -> None:
        host = self.host
        with host.work_lock:
            if self.released:
                return
            self.released = True
            host.pending_tokens -= self.cost
            if self.client is not None:
                left = host.client_tokens.get(self.client, 0) - self.cost
                if left > 0:
                    host.client_tokens[self.client] = left
                else:
                    host.client_tokens.pop(self.client, None)

    def __del__(self):
        if not self.released:
            self.release()


@dataclass
class GenJob:
    prompts: list[Prompt]
    config: SampleConfig
    seeded: bool
    top_logprobs: int | None = None
    on_token: TokenCallback | None = None
    client: str | None = None  # who asked (the peer address): the queue takes clients in turn
    future: Future = field(default_factory=Future)
    cancelled: bool = (
        False  # set by the request side when its client goes away: its rows stop at the next token
    )

    def batch_key(self):
        """Jobs with equal keys decode in one batch, each row under its own job's sampling parameters; a
        seeded job runs alone (its draws must not depend on who else is decoding)."""
        return None if self.seeded else (self.config.precision, self.top_logprobs)


@dataclass
class CallJob:
    fn: Callable
    future: Future = field(default_factory=Future)


class FairQueue:
    """A model's waiting jobs, taken in turn across clients and first in, first out within one client: a
    client's queued requests put at most one of them ahead of each request of another. Jobs without a
    ``client`` (the explorer's calls, unnamed clients) share one turn. ``put(None)`` closes the queue: ``get``
    returns None once every job put before it was taken."""

    def __init__(self):
        self._cv = threading.Condition()
        self._turns: dict = {}  # client -> its waiting jobs, in the order their turns come
        self._closing = False

    def put(self, job) -> None:
        with self._cv:
            if job is None:
                self._closing = True
            else:
                self._turns.setdefault(getattr(job, "client", None), deque()).append(job)
            self._cv.notify()

    def _take(self):
        client = next(iter(self._turns))
        jobs = self._turns.pop(client)
        job = jobs.popleft()
        if jobs:  # its next job waits for every other client's turn
            self._turns[client] = jobs
        return job

    def get(self):
        with self._cv:
            while not self._turns and not self._closing:
                self._cv.wait()
            return self._take() if self._turns else None

    def get_nowait(self):
        with self._cv:
            if not self._turns:
                raise queue.Empty
            return self._take()

    def qsize(self) -> int:
        with self._cv:
            return sum(len(j) for j in self._turns.values())


class ModelHost:
    def __init__(
        self,
        aid: str,
        model,
        tokenizer,
        batch_size: int = 16,
        max_queue: int = 64,
        max_pending_tokens: int = MAX_PENDING_TOKENS,
        max_client_tokens: int | None = MAX_CLIENT_TOKENS,
    ):
        self.id, self.model, self.tok, self.batch_size, self.max_queue = (
            aid,
            model,
            tokenizer,
            batch_size,
            max_queue,
        )
        # the request side encodes and decodes with its own copy: a fast tokenizer used from two threads at
        # once can fail ("Already borrowed")
        self.view = copy.deepcopy(tokenizer)
        # decoding and formatting of long answers (echoed prompts, log-probabilities) run on one text thread
        # with a copy of its own, off the event loop and off the model's thread
        self.text_tok = copy.deepcopy(tokenizer)
        self.text_pool = ThreadPoolExecutor(1, thread_name_prefix=f"text-{aid}")
        self.max_pending_tokens, self.max_client_tokens = max_pending_tokens, max_client_tokens
        self.pending_tokens = 0
        self.client_tokens: dict[str, int] = {}
        self.work_lock = threading.RLock()  # re-entrant: a Reservation collected inside reserve releases
        self.jobs = FairQueue()
        self.batches: list[int] = []  # requests per generation run, for /api/status, the bench and the tests
        self.held: deque = deque()  # a job taken from the queue that must run next
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name=f"model-{aid}", daemon=True)
        self.thread.start()

    @property
    def context(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def call(self, fn: Callable) -> Future:
        """Run ``fn(model, tokenizer)`` on the worker thread (queued behind earlier jobs)."""
        job = CallJob(fn)
        self._put(job)
        return job.future

    def generate(
        self,
        prompts: list[Prompt],
        config: SampleConfig,
        seeded: bool,
        top_logprobs: int | None = None,
        on_token: TokenCallback | None = None,
        client: str | None = None,
    ) -> GenJob:
        """Queue a generation (``client``: who asks, for taking clients in turn); ``job.future`` resolves to
        its completions, ``job.cancelled = True`` stops it."""
        job = GenJob(list(prompts), config, seeded, top_logprobs, on_token, client=client)
        self._put(job)
        return job

    def text(self, fn: Callable) -> Future:
        """Run ``fn(tokenizer)`` on this model's text thread (CPU work on text kept off the event loop:
        decoding, log-probability formatting); its tokenizer is a copy used by that thread only."""
        try:
            return self.text_pool.submit(fn, self.text_tok)
        except (
            RuntimeError
        ):  # unloaded while a request still formats its answer: a thread of its own (decoding only)
            once = ThreadPoolExecutor(1, thread_name_prefix=f"text-{self.id}")
            fut = once.submit(fn, self.text_tok)
            once.shutdown(wait=False)
            return fut

    def reserve(
        self, cost: int, client: str | None = None, what: str = "", alone: bool = False
    ) -> Reservation:
        """Hold ``cost`` tokens of work for a request until its ``Reservation`` is released. TooMuchWork when
        the request alone is over the bound (per model, or per client when ``client`` is named); QueueFull
        when the work already pending leaves no room for it now. ``alone``: the request cannot share a batch
        (a seeded one runs by itself), so each of its tokens costs a whole batch's decode step: its cost
        counts ``batch_size`` times. ``what`` describes the work, for the messages."""
        if alone:
            cost *= self.batch_size
            what = f"{what}, ×{self.batch_size}: seeded, it runs alone" if what else "seeded: runs alone"
        per = self.max_client_tokens if client is not None else None
        how = f" ({what})" if what else ""
        by_client = per is not None and per < self.max_pending_tokens
        cap, unit, flag = (
            (per, "client", "--max-client-tokens")
            if by_client
            else (self.max_pending_tokens, "model", "--max-pending-tokens")
        )
        if cost > cap:
            raise TooMuchWork(
                f"this request is {cost} tokens of work{how}, over the bound of {cap} pending per "
                f"{unit}; send fewer prompts, a smaller n or max_tokens (the server's {flag} sets the "
                "bound)"
            )
        with self.work_lock:
            if self.pending_tokens + cost > self.max_pending_tokens:
                raise QueueFull(
                    f"model {self.id} has {self.pending_tokens} tokens of work pending and this request "
                    f"adds {cost}{how}, over its bound of {self.max_pending_tokens}; retry later (the "
                    "server's --max-pending-tokens sets the bound)"
                )
            mine = self.client_tokens.get(client, 0) if client is not None else 0
            if per is not None and mine + cost > per:
                raise QueueFull(
                    f"this client ({client}) has {mine} tokens of work pending on model {self.id} and "
                    f"this request adds {cost}{how}, over the bound of {per} per client; retry later "
                    "(the server's --max-client-tokens sets the bound)"
                )
            self.pending_tokens += cost
            if client is not None:
                self.client_tokens[client] = mine + cost
        return Reservation(self, cost, client)

    def check_room(self) -> None:
        """Raise QueueFull when ``max_queue`` requests already wait (approximate under races by a request or
        two: a bound on memory and latency, not a quota)."""
        if self.jobs.qsize() >= self.max_queue:
            raise QueueFull(
                f"model {self.id} has {self.max_queue} requests waiting; retry later (the server's "
                "--max-queue sets the bound)"
            )

    def _put(self, job) -> None:
        if self.closed:
            raise HeredityError(
                f"model {self.id} was unloaded to make room for another; send the request again"
            )
        self.check_room()
        self.jobs.put(job)

    def stop(self) -> None:
        """Finish the queued jobs, then end the threads."""
        self.closed = True
        self.jobs.put(None)
        self.text_pool.shutdown(wait=False)

    def _loop(self) -> None:
        while True:
            job = self.held.popleft() if self.held else self.jobs.get()
            if job is None:
                return
            if isinstance(job, CallJob):
                self._run_call(job)
            else:
                self._run_gen(job)

    def _run_call(self, job: CallJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn(self.model, self.tok))
        except BaseException as e:  # delivered to the request that asked
            job.future.set_exception(e)

    @staticmethod
    def _start(job: GenJob) -> bool:
        """Mark a job running; one whose client left while it waited in the queue resolves empty instead."""
        if not job.future.set_running_or_notify_cancel():
            return False
        if job.cancelled:
            job.future.set_result([])
            return False
        return True

    def _run_gen(self, first: GenJob) -> None:
        """Decode ``first``; unless it is seeded, unseeded requests that arrive while it runs join the running
        batch (continuous batching, each with its own sampling parameters; free slots go to the request with
        the fewest rows decoding), until a request that cannot join (seeded, another precision or
        top_logprobs) is next in line."""
        if not self._start(first):
            return
        key = first.batch_key()
        owner: list[tuple[GenJob, int]] = []
        results: dict[int, list[Completion]] = {}
        remaining: dict[int, int] = {}
        jobs: list[GenJob] = []

        def admit(job: GenJob) -> list:
            jobs.append(job)
            owner.extend((job, i) for i in range(len(job.prompts)))
            results[id(job)], remaining[id(job)] = [], len(job.prompts) * job.config.n
            return job.prompts

        def feed() -> list:
            new: list = []  # (prompts, config) per joining job
            while not self.held:
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if isinstance(nxt, GenJob) and nxt.batch_key() == key:
                    if self._start(nxt):
                        new.append((admit(nxt), nxt.config))
                        self.batches[-1] += 1
                else:  # keep the queue's order: stop taking jobs at the first one that cannot join
                    self.held.append(nxt)
            return new

        def route(pi: int, si: int, tok: int, lp) -> None:
            j, local = owner[pi]
            if j.on_token is not None:
                j.on_token(local, si, tok, lp)

        def done(c: Completion) -> None:
            j, local = owner[c.prompt_index]
            results[id(j)].append(dataclasses.replace(c, prompt_index=local))
            remaining[id(j)] -= 1
            if remaining[id(j)] == 0:
                j.future.set_result(sorted(results[id(j)], key=lambda x: (x.prompt_index, x.sample_index)))

        prompts = admit(first)
        cfg = first.config
        if not first.seeded:
            cfg = cfg.model_copy(
                update={"seed": random.getrandbits(31), "batch_size": max(cfg.batch_size, self.batch_size)}
            )
        self.batches.append(1)
        try:
            sample(
                self.model,
                self.tok,
                prompts,
                cfg,
                progress=False,
                on_token=route,
                top_logprobs=first.top_logprobs,
                feed=None if first.seeded else feed,
                on_done=done,
                cancelled=lambda pi: owner[pi][0].cancelled,
            )
        except BaseException as e:
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)


class EncoderHost:
    """A stored sentence encoder (a sentence-transformers directory), loaded once: its encoding runs on a
    thread of its own, one request at a time (the model and its tokenizer are shared), off the event loop
    and off the threads of other models and encoders."""

    def __init__(self, aid: str, model):
        self.id, self.model = aid, model
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"encoder-{aid}")

    def embed(self, texts: list[str]) -> Future:
        """(normalized embeddings, one row per text; the texts' tokens with special tokens, as
        all-MiniLM-L6-v2's are counted), on the encoder's thread."""
        try:
            return self.pool.submit(self._embed, texts)
        except RuntimeError:  # unloaded to make room since the request got it: a thread of its own, once
            once = ThreadPoolExecutor(1, thread_name_prefix=f"encoder-{self.id}")
            fut = once.submit(self._embed, texts)
            once.shutdown(wait=False)
            return fut

    def _embed(self, texts: list[str]):
        m = self.model
        vecs = m.encode(
            texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vecs, sum(len(m.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts)

    def stop(self) -> None:
        """End the thread once the queued requests are done."""
        self.pool.shutdown(wait=False)


class ModelPool:
    """Names → loaded ``ModelHost``s (and stored sentence encoders → ``EncoderHost``s, for embeddings). Over
    HTTP a model is named by a bundled name, a stored model or adapter id (or unique prefix), or a stored
    artifact's name; never by a filesystem path or a hub id."""

    def __init__(
        self,
        store: Store,
        max_loaded: int = 2,
        batch_size: int = 16,
        max_queue: int = 64,
        max_pending_tokens: int = MAX_PENDING_TOKENS,
        max_client_tokens: int | None = MAX_CLIENT_TOKENS,
    ):
        self.store, self.max_loaded, self.batch_size, self.max_queue = (
            store,
            max_loaded,
            batch_size,
            max_queue,
        )
        # bounds on the work pending per model and per client (``ModelHost.reserve``); None: no bound per
        # client
        self.max_pending_tokens, self.max_client_tokens = max_pending_tokens, max_client_tokens
        self.hosts: OrderedDict[str, ModelHost] = OrderedDict()
        self.lock = threading.Lock()  # guards ``hosts``; never held while a model loads
        self.loading: dict[str, threading.Lock] = {}
        # one model is loaded at a time: transformers builds a model under a process-wide "meta device"
        # context that is not thread-safe (two loads at once failed with "Cannot copy out of meta tensor");
        # a load never holds up requests to the models already loaded
        self.load_slots = threading.Lock()
        self.aliases: dict[str, str] = {}  # names given by POST /v1/load_lora_adapter → stored adapter ids
        # stored sentence encoders loaded for POST /v1/embeddings: at most ``max_loaded``, least recently used
        # unloaded first
        self.encoders: OrderedDict[str, EncoderHost] = OrderedDict()

    def load_adapter(self, name: str, path: str, inplace: bool = False) -> str:
        """Serve the stored adapter whose directory is ``path`` as ``name`` (vLLM's runtime LoRA loading,
        limited to this store: a path outside it is refused, so nothing is read from elsewhere on the disk).
        ``name`` may be the adapter's own id, or a new name: never one that already names another model
        (ValueError)."""
        from pathlib import Path

        name, p = name.strip(), Path(path)
        art = None
        if ID_RE.fullmatch(p.name):
            try:
                self.store.resolve_id(p.name)
            except HeredityError:
                pass
            else:
                art = self.store.get(p.name)  # a damaged artifact says so itself
        try:
            inside = art is not None and art.path.resolve() == p.resolve()
        except (OSError, RuntimeError, ValueError):
            inside = False
        if not inside or art.kind != "adapter" or _is_reward_model(art):
            raise ModelNotFound(
                f"lora_path {path} is not an adapter directory in this server's store; heredity serve "
                f"loads stored adapters only (their directories are under {self.store.artifacts_dir})"
            )
        if name != art.id and self._names_a_model(name):
            raise ValueError(
                f"lora_name {name!r} already names a model here; load the adapter under its id {art.id} "
                "or a new name"
            )
        with self.lock:
            if name in self.aliases and not inplace:
                raise ValueError(
                    f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
                    "in place, set 'load_inplace' to True."
                )
            self.aliases[name] = art.id
        return art.id

    def _names_a_model(self, name: str) -> bool:
        """Whether ``name`` already names something without the aliases: a bundled name, an artifact id or
        prefix, a stored model or adapter's name."""
        if name in BUNDLED or self.store.model_alias(name) is not None:
            return True
        if ID_PREFIX_RE.match(name):
            try:
                self.store.resolve_id(name)
                return True
            except HeredityError:
                return False
        return any(a.kind in ("model", "adapter") and a.name == name for a in self.store.list())

    def unload_adapter(self, name: str) -> None:
        with self.lock:
            if self.aliases.pop(name.strip(), None) is None:
                raise ModelNotFound(f"The lora adapter '{name}' cannot be found.")

    def resolve(self, name: str) -> str:
        name = (name or "").strip()
        aliased = self.aliases.get(name)
        if aliased is not None:
            return aliased
        stored = self.store.model_alias(name)  # a loop's alias: what it points to now, read per request
        if stored is not None:
            return stored
        if name in BUNDLED:
            return materialize(name, self.store)
        if ID_PREFIX_RE.match(name):
            try:
                aid = self.store.resolve_id(name)
            except HeredityError as e:
                raise ModelNotFound(str(e)) from None
            art = self.store.get(aid)
            if aid[0] in "ma" and not _is_reward_model(art) and not is_encoder(art):
                return aid
            what = (
                "a reward model (it scores answers, it does not write them)"
                if _is_reward_model(art)
                else "a sentence encoder (it embeds text at POST /v1/embeddings, it does not write)"
                if aid[0] == "m"
                else f"a {art.kind}"
            )
            raise ModelNotFound(f"{aid} is {what}, not a chat model; list models at GET /v1/models")
        named = [
            a
            for a in self.store.list()
            if a.kind in ("model", "adapter")
            and a.name == name
            and not _is_reward_model(a)
            and not is_encoder(a)
        ]
        if named:
            return named[-1].id
        raise ModelNotFound(
            f"no model {name!r}; use a name or id from GET /v1/models "
            "(paths and hub ids are not loaded over HTTP)"
        )

    def get(self, name: str) -> ModelHost:
        """The loaded host for a model, loading it once; a load does not hold up requests to other models."""
        aid = self.resolve(name)
        with self.lock:
            host = self.hosts.get(aid)
            if host is not None:
                self.hosts.move_to_end(aid)
                return host
            loading = self.loading.setdefault(aid, threading.Lock())
        with loading:  # one load per model, however many requests ask for it at once
            with self.lock:
                host = self.hosts.get(aid)
            if host is None:
                with self.load_slots:
                    model, tok = load(aid, self.store, merge_adapter=True)
                host = ModelHost(
                    aid,
                    model,
                    tok,
                    self.batch_size,
                    self.max_queue,
                    self.max_pending_tokens,
                    self.max_client_tokens,
                )
                with self.lock:
                    self.hosts[aid] = host
                    self.loading.pop(aid, None)
                    while len(self.hosts) > self.max_loaded:
                        _, old = self.hosts.popitem(last=False)
                        old.stop()
            return host

    def encoder_id(self, name: str) -> str | None:
        """The stored sentence encoder ``name`` names (its id, a unique id prefix, or its name: the newest of
        that name), or None when it names none (a language model, an alias, nothing)."""
        name = (name or "").strip()
        if name in self.aliases or name in BUNDLED:
            return None
        if ID_PREFIX_RE.match(name):
            try:
                aid = self.store.resolve_id(name)
            except HeredityError:
                return None
            return aid if aid[0] == "m" and is_encoder(self.store.get(aid)) else None
        named = [a for a in self.store.list("model") if a.name == name and is_encoder(a)]
        return named[-1].id if named else None

    def encoder(self, aid: str) -> EncoderHost:
        """The loaded host of stored encoder ``aid`` (an id from ``encoder_id``), loading it once (call off
        the event loop)."""
        with self.lock:
            host = self.encoders.get(aid)
            if host is not None:
                self.encoders.move_to_end(aid)
                return host
            loading = self.loading.setdefault(aid, threading.Lock())
        with loading:
            with self.lock:
                host = self.encoders.get(aid)
            if host is None:
                from sentence_transformers import SentenceTransformer

                with self.load_slots:
                    host = EncoderHost(aid, SentenceTransformer(str(self.store.path(aid)), device="cpu"))
                with self.lock:
                    self.encoders[aid] = host
                    self.loading.pop(aid, None)
                    while len(self.encoders) > self.max_loaded:
                        _, old = self.encoders.popitem(last=False)
                        old.stop()
            return host

    def listing(self) -> list[dict]:
        """Bundled models (whether converted yet or not) and every stored model and adapter (reward models
        excluded); stored sentence encoders are listed with kind ``embedding``, the loop's model aliases with
        kind ``alias`` (their ``name`` is what they serve now)."""
        out = [{"id": name, "kind": "bundled", "name": name, "created": 0} for name in BUNDLED]
        out += [
            {"id": alias, "kind": "adapter", "name": aid, "created": 0}
            for alias, aid in list(self.aliases.items())
            if alias != aid
        ]  # an adapter loaded under its own id is listed once, as stored
        for a in self.store.list():
            if a.kind in ("model", "adapter") and not _is_reward_model(a):
                kind = "embedding" if is_encoder(a) else a.kind
                out.append(
                    {"id": a.id, "kind": kind, "name": a.name, "created": int(a.created_at.timestamp())}
                )
        from heredity.store.db import ModelAliasRow

        with Session(self.store.engine) as s:  # the loop's aliases (lab-latest), last
            out += [
                {
                    "id": r.alias,
                    "kind": "alias",
                    "name": r.artifact_id,
                    "created": int(r.updated_at.timestamp()),
                }
                for r in s.scalars(select(ModelAliasRow).order_by(ModelAliasRow.alias))
            ]
        return out

    def close(self) -> None:
        with self.lock:
            for h in [*self.hosts.values(), *self.encoders.values()]:
                h.stop()
            self.hosts.clear()
            self.encoders.clear()


def _is_reward_model(a) -> bool:
    return a.meta.get("head") == "reward"
