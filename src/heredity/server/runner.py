"""Models behind the server: each loaded once, shared by all requests, driven by one worker thread.

A ``ModelHost`` owns one loaded model and a FIFO queue of jobs; its thread runs them one after another, so
two requests never touch the model at the same time. Generation jobs that carry no seed and have the same
sampling parameters are batched: the thread takes every such job waiting in the queue (up to
``batch_size`` sequences) and decodes them together in one continuous batch, each token routed back to
the request it belongs to. A job with a seed always runs alone, so its output depends on the seed only.
"""

from __future__ import annotations

import copy
import queue
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from heredity.engine.sampling import Completion, Prompt, SampleConfig, TokenCallback, sample
from heredity.errors import HeredityError
from heredity.models import BUNDLED, load, materialize
from heredity.store import Store
from heredity.store.store import ID_PREFIX_RE


class ModelNotFound(HeredityError):
    pass


@dataclass
class GenJob:
    prompts: list[Prompt]
    config: SampleConfig
    seeded: bool
    top_logprobs: int | None = None
    on_token: TokenCallback | None = None
    future: Future = field(default_factory=Future)

    def batch_key(self):
        return None if self.seeded else (self.config.model_dump_json(exclude={"seed"}), self.top_logprobs)


@dataclass
class CallJob:
    fn: Callable
    future: Future = field(default_factory=Future)


class ModelHost:
    def __init__(self, aid: str, model, tokenizer, batch_size: int = 16):
        self.id, self.model, self.tok, self.batch_size = aid, model, tokenizer, batch_size
        # the request side encodes and decodes with its own copy: a fast tokenizer used from two threads at
        # once can fail ("Already borrowed")
        self.view = copy.deepcopy(tokenizer)
        self.jobs: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # jobs per generation run, for the bench and the tests
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

    def generate(self, prompts: list[Prompt], config: SampleConfig, seeded: bool, top_logprobs: int | None = None,
                 on_token: TokenCallback | None = None) -> Future:
        job = GenJob(list(prompts), config, seeded, top_logprobs, on_token)
        self._put(job)
        return job.future

    def _put(self, job) -> None:
        if self.closed:
            raise HeredityError(f"model {self.id} was unloaded to make room for another; send the request again")
        self.jobs.put(job)

    def stop(self) -> None:
        """Finish the queued jobs, then end the thread."""
        self.closed = True
        self.jobs.put(None)

    def _loop(self) -> None:
        held: list = []
        while True:
            job = held.pop(0) if held else self.jobs.get()
            if job is None:
                return
            if isinstance(job, CallJob):
                self._run_call(job)
                continue
            group = [job]
            key = job.batch_key()
            if key is not None:  # take every compatible job already waiting, up to a batch of sequences
                seqs = len(job.prompts) * job.config.n
                while True:
                    try:
                        nxt = self.jobs.get_nowait()
                    except queue.Empty:
                        break
                    if (isinstance(nxt, GenJob) and nxt.batch_key() == key
                            and seqs + len(nxt.prompts) * nxt.config.n <= max(self.batch_size, job.config.batch_size)):
                        group.append(nxt)
                        seqs += len(nxt.prompts) * nxt.config.n
                    else:  # keep the queue's order: stop at the first job that cannot join
                        held.append(nxt)
                        break
            self._run_gen(group)

    def _run_call(self, job: CallJob) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn(self.model, self.tok))
        except BaseException as e:  # delivered to the request that asked
            job.future.set_exception(e)

    def _run_gen(self, group: list[GenJob]) -> None:
        group = [j for j in group if j.future.set_running_or_notify_cancel()]
        if not group:
            return
        owner: list[tuple[GenJob, int]] = [(j, i) for j in group for i in range(len(j.prompts))]
        prompts = [p for j in group for p in j.prompts]
        cfg = group[0].config
        if not group[0].seeded:
            cfg = cfg.model_copy(update={"seed": random.getrandbits(31)})
        cfg = cfg.model_copy(update={"batch_size": max(cfg.batch_size, min(self.batch_size, len(prompts) * cfg.n))})

        def route(pi: int, si: int, tok: int, lp) -> None:
            j, local = owner[pi]
            if j.on_token is not None:
                j.on_token(local, si, tok, lp)

        self.batches.append(len(group))
        try:
            comps = sample(self.model, self.tok, prompts, cfg, progress=False, on_token=route, top_logprobs=group[0].top_logprobs)
        except BaseException as e:
            for j in group:
                j.future.set_exception(e)
            return
        results: dict[int, list[Completion]] = {id(j): [] for j in group}
        for c in comps:
            j, local = owner[c.prompt_index]
            c.prompt_index = local
            results[id(j)].append(c)
        for j in group:
            j.future.set_result(results[id(j)])


class ModelPool:
    """Names → loaded ``ModelHost``s. Over HTTP a model is named by a bundled name, a stored model or adapter id
    (or unique prefix), or a stored artifact's name; never by a filesystem path or a hub id."""

    def __init__(self, store: Store, max_loaded: int = 2, batch_size: int = 16):
        self.store, self.max_loaded, self.batch_size = store, max_loaded, batch_size
        self.hosts: OrderedDict[str, ModelHost] = OrderedDict()
        self.lock = threading.Lock()

    def resolve(self, name: str) -> str:
        name = (name or "").strip()
        if name in BUNDLED:
            return materialize(name, self.store)
        if ID_PREFIX_RE.match(name):
            try:
                aid = self.store.resolve_id(name)
            except HeredityError as e:
                raise ModelNotFound(str(e)) from None
            if aid[0] in "ma":
                return aid
            raise ModelNotFound(f"{aid} is a {self.store.get(aid).kind}, not a model; list models at GET /v1/models")
        named = [a for a in self.store.list() if a.kind in ("model", "adapter") and a.name == name]
        if named:
            return named[-1].id
        raise ModelNotFound(
            f"no model {name!r}; use a name or id from GET /v1/models (paths and hub ids are not loaded over HTTP)"
        )

    def get(self, name: str) -> ModelHost:
        aid = self.resolve(name)
        with self.lock:
            host = self.hosts.get(aid)
            if host is None:
                model, tok = load(aid, self.store, merge_adapter=True)
                host = ModelHost(aid, model, tok, self.batch_size)
                self.hosts[aid] = host
                while len(self.hosts) > self.max_loaded:
                    _, old = self.hosts.popitem(last=False)
                    old.stop()
            self.hosts.move_to_end(aid)
            return host

    def listing(self) -> list[dict]:
        """Bundled models (whether converted yet or not) and every stored model and adapter."""
        out = [{"id": name, "kind": "bundled", "name": name, "created": 0} for name in BUNDLED]
        for a in self.store.list():
            if a.kind in ("model", "adapter"):
                out.append({"id": a.id, "kind": a.kind, "name": a.name, "created": int(a.created_at.timestamp())})
        return out

    def close(self) -> None:
        with self.lock:
            for h in self.hosts.values():
                h.stop()
            self.hosts.clear()
