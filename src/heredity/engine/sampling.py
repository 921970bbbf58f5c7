"""Batched sampling with a KV cache for many prompts × n samples.

What it does beyond a loop of ``model.generate`` (bench/sample.py measures the difference):
  * continuous batching: a finished sequence frees its slot for a waiting prompt, so a batch never
    carries finished rows to the end of its longest member;
  * each distinct prompt is prefilled once and its cache fanned out to its n samples, and the prefix
    common to all prompts (system prompt, chat template) is prefilled once for the whole call;
  * prompts are admitted longest first, so prefill batches carry little padding;
  * the KV cache is preallocated (no per-step ``torch.cat``).
Per-step cost is still HF's model forward: at batch 16 on a 2-core CPU the decode step is bound by
reading the fp32 weights, so the gain is largest when completions differ in length or n > 1.
Per-sequence stop: EOS or any stop string; the returned text ends before the stop string.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, Field, field_validator, model_serializer
from tqdm.auto import tqdm

from heredity.engine.cache import prealloc_cache
from heredity.errors import HeredityError
from heredity.store.ops import op

Prompt = (
    str | list[dict] | list[int]
)  # text, chat messages, or token ids (used as they are: no template, no BOS)
TokenLogprobs = tuple[float, list[tuple[int, float]]]
TokenCallback = Callable[[int, int, int, "TokenLogprobs | None"], None]


class SampleConfig(BaseModel):
    """How to sample. Same prompts + same config (seed, batch_size included) → the same samples."""

    n: int = Field(1, ge=1, description="samples per prompt")
    temperature: float = Field(1.0, ge=0.0, le=10.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(64, ge=1, le=32768)
    stop: list[str] = Field(default_factory=list, description="stop strings (not included in the text)")
    seed: int = 0
    batch_size: int = Field(16, ge=1, description="sequences decoded together")
    chat: bool = Field(True, description="wrap string prompts as a user message in the chat template")
    system_prompt: str | None = None
    logit_bias: dict[int, float] = Field(
        default_factory=dict,
        description=(
            "token id → a value added to its logit before sampling "
            "(OpenAI's logit_bias: -100 bans, +100 forces)"
        ),
    )
    presence_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        description=(
            "subtracted from the logit of every token already generated in this completion (OpenAI's formula)"
        ),
    )
    frequency_penalty: float = Field(
        0.0,
        ge=-2.0,
        le=2.0,
        description=(
            "times the count of each token already generated in this completion, subtracted from its logit"
        ),
    )
    grammar: str | None = Field(
        None,
        description=(
            "constrained decoding: an llguidance grammar (engine.constrain.json_schema / regex / lark) every "
            "completion follows; a completion ends when the grammar is complete"
        ),
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description=(
            "int8 (opt-in, CPU, Llama-family): the decode step's projections and output head in int8 "
            "(engine.fastdecode; its KL from fp32 is in bench/sample.py); experiments use fp32"
        ),
    )

    @model_serializer(mode="wrap")
    def _keyed_only_when_on(self, handler):
        """The logit adjustments enter a step's key only when set: with them off sampling computes exactly
        what it did before they existed, so existing memoized samples stay valid."""
        d = handler(self)
        for k, neutral in (
            ("logit_bias", {}),
            ("presence_penalty", 0.0),
            ("frequency_penalty", 0.0),
            ("grammar", None),
            ("precision", "fp32"),
        ):
            if k in d and d[k] == neutral:
                d.pop(k)
        return d

    @field_validator("stop")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if any(s == "" for s in v):
            raise ValueError("stop strings must not be empty")
        return v


@dataclass
class Completion:
    prompt_index: int
    sample_index: int
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string), "length", or "cancelled"
    eos_id: int | None = (
        None  # the end-of-sequence token drawn, when the sequence ended on one (not part of token_ids)
    )
    logprobs: list[TokenLogprobs] | None = field(default=None, repr=False)  # per token, when asked for

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def is_token_ids(prompt) -> bool:
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    )


def encode_prompt(tokenizer, prompt: Prompt, config: SampleConfig) -> list[int]:
    """The token ids the model is conditioned on: token-id prompts as they are, else the rendered text's
    ids."""
    if is_token_ids(prompt):
        return list(prompt)
    return tokenizer(render_prompt(tokenizer, prompt, config), add_special_tokens=False)["input_ids"]


def as_messages(prompt: Prompt) -> list[dict]:
    """A prompt as chat messages: text becomes one user message."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def render_prompt(tokenizer, prompt: Prompt, config: SampleConfig) -> str:
    """The exact text the model is conditioned on."""
    if isinstance(prompt, str) and not config.chat:
        return prompt
    messages = as_messages(prompt)
    if config.system_prompt is not None and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": config.system_prompt}, *messages]
    if not getattr(tokenizer, "chat_template", None):
        raise HeredityError("this tokenizer has no chat template; pass chat=False and plain-text prompts")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@torch.inference_mode()
def sample(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    config: SampleConfig | None = None,
    progress: bool = True,
    fast: bool = True,
    on_token: TokenCallback | None = None,
    top_logprobs: int | None = None,
    feed: Callable[[], Sequence[Prompt]] | None = None,
    on_done: Callable[[Completion], None] | None = None,
    cancelled: Callable[[int], bool] | None = None,
):
    """Sample ``config.n`` completions for every prompt; returns ``Completion``s ordered by (prompt, sample).

    ``fast``: on CPU, decode Llama-family models with the lean fused step (``engine.fastdecode``).
    ``on_token(prompt_index, sample_index, token_id, logprobs)`` is called for every generated token as it
    is drawn (EOS is not a token of the completion; streaming servers use this). With ``top_logprobs=k``
    (0 included), ``logprobs`` is ``(log p(token), [(id, log p), ...k best])`` under the model's own
    distribution (before temperature and top_p), and each ``Completion.logprobs`` holds them too.
    ``feed()`` is polled once per decode step for more work: a list of ``(prompts, config)`` jobs (a server's
    newly arrived requests), admitted into the running batch as slots allow; their indices continue after
    ``prompts``, and prefix sharing is off. Each job keeps its own ``config`` (None: ``config``) for what is
    per sequence: n, temperature, top_p, max_new_tokens, stop, logit_bias, the penalties, grammar, chat and
    system_prompt; ``precision``, ``batch_size`` and ``seed`` are the batch's. Free slots go to the job with
    the fewest rows decoding, so a job of many prompts cannot hold the others back until it ends.
    ``on_done(completion)`` is called as each sequence finishes. ``cancelled(prompt_index)`` is asked before
    each token is kept: when it says yes the sequence ends there (finish reason ``"cancelled"``), freeing its
    slot (a server's client went away)."""
    config = config or SampleConfig()
    from heredity.models import RemoteModel

    if isinstance(model, RemoteModel):
        return _sample_remote(model, prompts, config, progress)
    if not prompts:
        return []
    device = next(model.parameters()).device
    if any(is_token_ids(p) for p in prompts):
        encoded = [encode_prompt(tokenizer, p, config) for p in prompts]
    else:  # one batched call
        encoded = tokenizer([render_prompt(tokenizer, p, config) for p in prompts], add_special_tokens=False)[
            "input_ids"
        ]
    ctx = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(e) for e in encoded)
    if ctx and longest + config.max_new_tokens > ctx:
        raise HeredityError(
            f"prompt of {longest} tokens + max_new_tokens {config.max_new_tokens} "
            f"exceeds the model's context of {ctx}; "
            "shorten the prompt or lower max_new_tokens"
        )
    eos = _eos_ids(model, tokenizer)
    pad = pad_id(tokenizer, model)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    bar = tqdm(total=len(prompts) * config.n, desc="sampling", unit="seq", disable=not progress, leave=False)
    dec = _Decoder(model, tokenizer, encoded, config, eos, pad, gen, device, bar)
    dec.on_token, dec.top_logprobs, dec.on_done, dec.cancelled = on_token, top_logprobs, on_done, cancelled
    if feed is not None:
        dec.feed, dec.prefix_len = feed, 0
    if config.precision != "fp32":
        from heredity.engine import fastdecode

        why = "it runs on CUDA" if device.type != "cpu" else fastdecode.unsupported(model)
        if why is not None or not fast:
            raise HeredityError(
                f"precision {config.precision} needs the CPU decode step (engine.fastdecode), which this "
                f"model cannot take ({why or 'fast=False'}); use precision fp32"
            )
    if fast and device.type == "cpu":
        from heredity.engine import fastdecode

        if fastdecode.supports(model):
            dec.fast = fastdecode.for_model(model, config.precision)
    done = dec.run()
    bar.close()
    results = {(c.prompt_index, c.sample_index): c for c in done}
    return [results[k] for k in sorted(results)]


class _Decoder:
    """Continuous batching over one preallocated KV cache.

    Up to ``batch_size`` sequences decode together. A finished sequence frees its slot; once a few
    slots are free, the cache is rebuilt: finished rows leave, waiting prompts are prefilled and join,
    and leading columns no row still attends to are trimmed. Every prompt shares the prefill of the
    prefix common to all prompts (system prompt and chat template), and a prompt's n samples share its
    prefill. Row layout on the cache's time axis: [unused | prefix | pad | suffix | generated ...];
    the attention mask hides unused and pad columns, and position ids count only real tokens.
    """

    def __init__(self, model, tokenizer, encoded, config: SampleConfig, eos, pad, gen, device, bar):
        self.model, self.tok, self.enc, self.cfg = model, tokenizer, encoded, config
        self.eos, self.pad, self.gen, self.device, self.bar = eos, pad, gen, device, bar
        self.n_layers = model.config.num_hidden_layers
        # waiting prompt indices per job (0: the call's own prompts, then each fed job), in admission order;
        # a job's entry leaves when its last prompt is admitted
        self.pending: dict[int, deque[int]] = {}
        if encoded:
            self.pending[0] = deque(sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i)))
        self.job = [0] * len(encoded)  # prompt index -> its job
        self.configs = [config]  # job -> its SampleConfig
        self.stop_windows = [_stop_window(tokenizer, config.stop)]
        self.prefix_len = _common_prefix_len(encoded)
        self.prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.done: list[Completion] = []
        self.cache = prealloc_cache(self.n_layers, 0)
        self.rows: list[tuple[int, int]] = []  # (prompt index, sample index) per batch row
        self.tokens: list[list[int]] = []
        self.alive: list[bool] = []
        self.att = torch.zeros((0, 0), dtype=torch.long, device=device)
        self.pos = torch.zeros(0, dtype=torch.long, device=device)
        self.inp = torch.zeros(0, dtype=torch.long, device=device)
        self.cur = 0
        self.cap = 0
        self.fast = None  # a FastDecoder for the one-token steps, when the architecture allows
        self.on_token: TokenCallback | None = None
        self.top_logprobs: int | None = None
        self.lps: list[list[TokenLogprobs]] = []
        self.feed: Callable[[], Sequence[tuple[Sequence[Prompt], SampleConfig | None]]] | None = None
        self.on_done: Callable[[Completion], None] | None = None
        self.cancelled: Callable[[int], bool] | None = None
        self.constraints: dict = {}  # (prompt, sample) -> its grammar matcher, with config.grammar
        self.logits_dim = model.get_output_embeddings().weight.shape[0]

    def job_of(self, b: int) -> int:
        """Row b's job."""
        return self.job[self.rows[b][0]]

    def cfg_of(self, b: int) -> SampleConfig:
        """Row b's sampling parameters (its job's)."""
        return self.configs[self.job_of(b)]

    def rows_per_job(self, rows) -> Counter:
        """How many of the batch rows ``rows`` each job holds."""
        return Counter(self.job_of(b) for b in rows)

    def draw(self, logits: torch.Tensor, rows) -> torch.Tensor:
        """One token per row of ``logits`` (batch rows ``rows``), each under its own job's parameters; rows of
        one job are drawn together (with one job, exactly as a single ``_pick``)."""
        rows = list(rows)
        jobs = [self.job_of(b) for b in rows]
        if len(set(jobs)) <= 1:
            cfg = self.configs[jobs[0]] if jobs else self.cfg
            return _pick(self.adjust(logits, rows, cfg), cfg.temperature, cfg.top_p, self.gen)
        out = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        for j in dict.fromkeys(jobs):
            idx = [r for r, jr in enumerate(jobs) if jr == j]
            cfg = self.configs[j]
            sub = self.adjust(logits[idx], [rows[r] for r in idx], cfg)
            out[idx] = _pick(sub, cfg.temperature, cfg.top_p, self.gen)
        return out

    def run(self) -> list[Completion]:
        self.rebuild()
        while True:
            if not self.rows:  # all done: unless more prompts arrived meanwhile
                self.poll()
                if not self.pending:
                    break
                self.rebuild()
                continue
            self.forward()
            rows = range(len(self.rows))
            self.consume(rows, self.draw(self.logits, rows), self.logits)
            self.poll()
            alive = sum(self.alive)
            dead = len(self.rows) - alive
            if (
                alive == 0
                or self.cur >= self.cap
                or (self.pending and dead >= max(1, self.cfg.batch_size // 8))
                or (not self.pending and dead * 2 >= len(self.rows))
                or (self.feed is not None and self.pending and alive + self.next_n() <= self.cfg.batch_size)
            ):
                self.rebuild()
        return self.done

    def poll(self) -> None:
        """Queue the jobs ``feed`` hands over, for the next rebuilds to admit."""
        if self.feed is None:
            return
        for prompts, cfg in self.feed():
            if not prompts:
                continue
            cfg = cfg or self.cfg
            j = len(self.configs)
            self.configs.append(cfg)
            self.stop_windows.append(_stop_window(self.tok, cfg.stop))
            self.pending[j] = deque()
            for p in prompts:
                self.enc.append(encode_prompt(self.tok, p, cfg))
                self.job.append(j)
                self.pending[j].append(len(self.enc) - 1)
                self.bar.total += cfg.n

    def next_job(self, live: Counter) -> int:
        """The waiting job the next free slot goes to: the one with the fewest rows decoding (``live``), the
        earliest on a tie."""
        return min(self.pending, key=lambda j: (live[j], j))

    def next_n(self) -> int:
        """Rows the next admitted prompt takes (its n)."""
        live = self.rows_per_job(b for b, a in enumerate(self.alive) if a)
        return self.configs[self.next_job(live)].n

    def forward(self) -> None:
        self.att[:, self.cur] = 1
        if self.fast is not None:
            self.logits = self.fast.step(self.inp, self.pos, self.cache, self.cur, self.att).float()
            self.cur += 1
            self.pos = self.pos + 1
            return
        out = self.model(
            input_ids=self.inp[:, None],
            attention_mask=self.att[:, : self.cur + 1],
            position_ids=self.pos[:, None],
            cache=self.cache,
            use_cache=True,
        )
        self.cur += 1
        self.pos = self.pos + 1
        self.logits = out.logits[:, -1, :].float()

    def adjust(self, logits: torch.Tensor, rows, cfg: SampleConfig) -> torch.Tensor:
        """The logits sampling draws from: + logit_bias, − presence and frequency penalties over each row's
        own generated tokens (OpenAI's definitions), under ``cfg`` (the rows' job's). Logprobs reported to
        callers stay the model's own."""
        if not (cfg.logit_bias or cfg.presence_penalty or cfg.frequency_penalty or cfg.grammar):
            return logits
        out = logits.clone()
        if cfg.grammar:  # the grammar's mask: what it does not allow cannot be drawn, whatever the bias
            for r, b in enumerate(rows):
                out[r].masked_fill_(~self.constraint(b).allowed().to(out.device), float("-inf"))
        if cfg.logit_bias:
            ids = torch.tensor(list(cfg.logit_bias), device=out.device)
            out[:, ids] += torch.tensor(list(cfg.logit_bias.values()), device=out.device, dtype=out.dtype)
        if cfg.presence_penalty or cfg.frequency_penalty:
            for r, b in enumerate(rows):
                if self.tokens[b]:
                    counts = torch.bincount(
                        torch.tensor(self.tokens[b], device=out.device), minlength=out.shape[-1]
                    )
                    out[r] -= cfg.frequency_penalty * counts[: out.shape[-1]].to(out.dtype)
                    out[r] -= cfg.presence_penalty * (counts[: out.shape[-1]] > 0).to(out.dtype)
        return out

    def constraint(self, b: int):
        """Row b's grammar matcher (one per sequence, made at its first token)."""
        from heredity.engine.constrain import Constraint

        key = self.rows[b]
        c = self.constraints.get(key)
        if c is None:
            c = self.constraints[key] = Constraint(self.tok, self.cfg_of(b).grammar, self.logits_dim)
        return c

    def consume(self, rows, nxt: torch.Tensor, logits: torch.Tensor) -> None:
        """Append each live row's new token, or finish the row (EOS, stop string, length)."""
        nxt_list = nxt.tolist()
        info = self._logprobs(logits, nxt) if self.top_logprobs is not None else None
        for r, (b, tok) in enumerate(zip(rows, nxt_list, strict=True)):
            if not self.alive[b]:
                continue
            cfg = self.cfg_of(b)
            window = self.stop_windows[self.job_of(b)]
            reason = None
            if self.cancelled is not None and self.cancelled(self.rows[b][0]):
                reason = "cancelled"
            elif tok in self.eos:
                reason = "stop"
            else:
                self.tokens[b].append(tok)
                lp = info[r] if info is not None else None
                if lp is not None:
                    self.lps[b].append(lp)
                if self.on_token is not None:
                    self.on_token(self.rows[b][0], self.rows[b][1], tok, lp)
                grammar_done = False
                if cfg.grammar:
                    c = self.constraint(b)
                    c.advance(tok)
                    grammar_done = c.done
                if grammar_done:
                    reason = "stop"
                elif window and _hit_stop(self.tok, self.tokens[b][-window:], cfg.stop):
                    reason = "stop"
                elif len(self.tokens[b]) >= cfg.max_new_tokens:
                    reason = "length"
            if reason:
                self.alive[b] = False
                c = _finish(self.tok, self.rows[b], self.tokens[b], reason, cfg.stop)
                if reason == "stop" and tok in self.eos and len(c.token_ids) == len(self.tokens[b]):
                    c.eos_id = tok
                if self.top_logprobs is not None:
                    c.logprobs = list(self.lps[b])
                self.done.append(c)
                self.bar.update(1)
                if self.on_done is not None:
                    self.on_done(c)
        rows = list(rows)
        alive = torch.tensor([self.alive[b] for b in rows], device=self.device)
        self.inp[rows[0] : rows[-1] + 1] = torch.where(
            alive, nxt.to(self.device), torch.full_like(nxt, self.pad)
        )

    def rebuild(self) -> None:
        keep = [b for b, a in enumerate(self.alive) if a]
        admit: list[int] = []
        live = self.rows_per_job(keep)  # rows per job in the new batch
        rows = len(keep)
        while self.pending:
            j = self.next_job(live)
            n = self.configs[j].n
            if rows + n > self.cfg.batch_size and (keep or admit):
                break
            admit.append(self.pending[j].popleft())
            if not self.pending[j]:
                del self.pending[j]
            live[j], rows = live[j] + n, rows + n
        kidx = torch.tensor(keep, dtype=torch.long, device=self.device)
        if keep:  # trim leading columns that no kept row attends to
            first = self.att[kidx, : self.cur].float().argmax(dim=1)
            t0 = int(first.min())
        else:
            t0 = self.cur
        t_keep = self.cur - t0
        new = self.prefill(admit) if admit else None
        P = new["att"].shape[1] if new else 0
        T = max(t_keep, P)
        # room for the longest answer still allowed, up to 128 columns (the cache grows at the next rebuild)
        longest = max((self.configs[j].max_new_tokens for j in live), default=self.cfg.max_new_tokens)
        cap = T + max(8, min(longest, 128))
        R = len(keep) + (new["att"].shape[0] if new else 0)
        att = torch.zeros((R, cap), dtype=torch.long, device=self.device)
        if keep:
            att[: len(keep), T - t_keep : T] = self.att[kidx, t0 : self.cur]
        if new:
            att[len(keep) :, T - P : T] = new["att"]
        for li, layer in enumerate(self.cache.layers):
            ref = new["kv"][li][0] if new else layer._k
            shape = (R, ref.shape[1], cap, ref.shape[3])
            k = ref.new_zeros(shape)
            v = ref.new_zeros((R, ref.shape[1], cap, (new["kv"][li][1] if new else layer._v).shape[3]))
            if keep:
                k[: len(keep), :, T - t_keep : T] = layer._k[kidx, :, t0 : self.cur]
                v[: len(keep), :, T - t_keep : T] = layer._v[kidx, :, t0 : self.cur]
            if new:
                k[len(keep) :, :, T - P : T] = new["kv"][li][0]
                v[len(keep) :, :, T - P : T] = new["kv"][li][1]
            layer._k, layer._v, layer.n, layer.capacity = k, v, T, cap
            layer.keys, layer.values = k[:, :, :T], v[:, :, :T]
            layer.dtype, layer.device, layer.is_initialized = k.dtype, k.device, True
        self.att, self.cur, self.cap = att, T, cap
        self.rows = [self.rows[b] for b in keep] + (new["rows"] if new else [])
        self.tokens = [self.tokens[b] for b in keep] + [[] for _ in (new["rows"] if new else [])]
        self.lps = [self.lps[b] for b in keep] + [[] for _ in (new["rows"] if new else [])]
        self.alive = [True] * R
        old_inp = self.inp[kidx] if keep else self.inp[:0]
        if new:
            self.pos = torch.cat([self.pos[kidx] if keep else self.pos[:0], new["pos"]])
            first_tok = self.draw(new["logits"], range(len(keep), R))
            self.inp = torch.cat([old_inp, torch.full_like(first_tok, self.pad)])
            self.consume(range(len(keep), R), first_tok, new["logits"])
        else:
            self.pos = self.pos[kidx] if keep else self.pos[:0]
            self.inp = old_inp
        if R and not any(self.alive) and not self.pending:
            self.rows, self.tokens, self.alive = [], [], []
        elif R and not any(self.alive):
            self.rebuild()

    def prefill(self, admit: list[int]) -> dict:
        """Prefill the admitted prompts (sharing the common prefix), fanned out to n samples each."""
        p = self.prefix_len
        if p and self.prefix_kv is None:
            c = prealloc_cache(self.n_layers, p)
            ids = torch.tensor([self.enc[admit[0]][:p]], device=self.device)
            self.model(input_ids=ids, cache=c, use_cache=True, logits_to_keep=1)
            self.prefix_kv = [(layer._k, layer._v) for layer in c.layers]
        suffixes = [self.enc[i][p:] for i in admit]
        S, u = max(len(s) for s in suffixes), len(admit)
        ids = torch.full((u, S), self.pad, dtype=torch.long)
        att = torch.zeros((u, p + S), dtype=torch.long)
        att[:, :p] = 1
        for r, s in enumerate(suffixes):
            ids[r, S - len(s) :] = torch.tensor(s)
            att[r, p + S - len(s) :] = 1
        ids, att = ids.to(self.device), att.to(self.device)
        cache = prealloc_cache(self.n_layers, p + S)
        if p:
            for layer, (pk, pv) in zip(cache.layers, self.prefix_kv, strict=True):
                layer.lazy_initialization(pk.expand(u, -1, -1, -1), pv.expand(u, -1, -1, -1))
                layer._k[:, :, :p], layer._v[:, :, :p] = pk, pv
                layer.n = p
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=att,
            position_ids=pos[:, p:],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        ns = [self.configs[self.job[i]].n for i in admit]
        fan = torch.arange(u, device=self.device).repeat_interleave(torch.tensor(ns, device=self.device))
        return {
            "kv": [(layer._k[fan], layer._v[fan]) for layer in cache.layers],
            "att": att[fan],
            "pos": torch.tensor([len(self.enc[i]) for i in admit], device=self.device)[fan],
            "logits": out.logits[:, -1, :].float()[fan],
            "rows": [(i, k) for i, n in zip(admit, ns, strict=True) for k in range(n)],
        }

    def _logprobs(self, logits: torch.Tensor, nxt: torch.Tensor) -> list[TokenLogprobs]:
        lp = torch.log_softmax(logits.float(), dim=-1)
        chosen = lp.gather(-1, nxt.to(lp.device)[:, None]).squeeze(-1).tolist()
        if not self.top_logprobs:
            return [(c, []) for c in chosen]
        vals, idx = lp.topk(self.top_logprobs, dim=-1)
        return [
            (c, list(zip(i, v, strict=True)))
            for c, i, v in zip(chosen, idx.tolist(), vals.tolist(), strict=True)
        ]


def _common_prefix_len(encoded: list[list[int]]) -> int:
    """Length of the token prefix shared by all prompts, leaving every prompt at least one token of its
    own."""
    first, n = encoded[0], min(len(e) for e in encoded) - 1
    for e in encoded[1:]:
        i = 0
        while i < n and e[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    """One token per row: greedy at T = 0, else an exact draw from softmax(logits / T), nucleus-cut if
    top_p < 1.

    The draw inverts the cumulative distribution with one uniform number per row; ``torch.multinomial``
    draws an exponential variate for every vocabulary entry, which on a CPU costs as much as a fifth of a
    SmolLM2 decode step at batch 16."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature if temperature != 1.0 else logits, dim=-1)
    index = None
    if top_p < 1.0:
        probs, index = probs.sort(dim=-1, descending=True)
        cut = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        probs = probs.masked_fill(cut, 0.0)
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=gen, device=gen.device).to(cdf.device) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
    if index is not None:
        return index.gather(-1, choice).squeeze(-1)
    return choice.squeeze(-1)


def pad_id(tokenizer, model=None) -> int:
    """The id that fills padded positions (never attended to, never scored): the tokenizer's pad token, else
    its EOS, else the model's (lowest) EOS id, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    eos = _eos_ids(model, tokenizer) if model is not None else set()
    return min(eos) if eos else 0


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if e is not None:
            ids.update(e if isinstance(e, list) else [e])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _stop_window(tokenizer, stop: list[str]) -> int:
    if not stop:
        return 0
    return max(len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in stop) + 2


def _hit_stop(tokenizer, tail: list[int], stop: list[str]) -> bool:
    text = tokenizer.decode(tail, skip_special_tokens=False)
    return any(s in text for s in stop)


def _finish(tokenizer, row, toks, reason, stop) -> Completion:
    text = tokenizer.decode(toks, skip_special_tokens=True)
    if stop:
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
    return Completion(row[0], row[1], text, list(toks), reason)


def _sample_remote(model, prompts, config: SampleConfig, progress: bool) -> list[Completion]:
    from concurrent.futures import ThreadPoolExecutor

    client = model.client()

    if any(is_token_ids(p) for p in prompts):
        raise HeredityError("token-id prompts need a local model: an openai: endpoint takes text or messages")
    if config.grammar:
        raise HeredityError(
            "a grammar (constrained decoding) needs a local model: an openai: endpoint does not take one"
        )

    common = dict(
        model=model.model,
        n=config.n,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_new_tokens,
        stop=config.stop or None,
        seed=config.seed,
        **({"logit_bias": {str(k): v for k, v in config.logit_bias.items()}} if config.logit_bias else {}),
        **({"presence_penalty": config.presence_penalty} if config.presence_penalty else {}),
        **({"frequency_penalty": config.frequency_penalty} if config.frequency_penalty else {}),
    )

    def one(i: int) -> list[Completion]:
        p = prompts[i]
        raw = (
            isinstance(p, str) and not config.chat
        )  # plain text, no chat template: the completions route, as in process
        try:
            if raw:
                r = client.completions.create(prompt=p, **common)
            else:
                messages = as_messages(p)
                if config.system_prompt is not None and messages[0].get("role") != "system":
                    messages = [{"role": "system", "content": config.system_prompt}, *messages]
                r = client.chat.completions.create(messages=messages, **common)
        except Exception as e:
            raise HeredityError(
                f"endpoint {model.base_url} failed for model {model.model}: {type(e).__name__}: {e}"
            ) from e
        return [
            Completion(
                i,
                k,
                (ch.text if raw else ch.message.content) or "",
                [],
                "length" if ch.finish_reason == "length" else "stop",
            )
            for k, ch in enumerate(sorted(r.choices, key=lambda c: c.index))
        ]

    out: list[Completion] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for res in tqdm(
            pool.map(one, range(len(prompts))), total=len(prompts), disable=not progress, desc="sampling"
        ):
            out.extend(res)
    return out


def tokens_per_second(completions: list[Completion], seconds: float) -> float:
    return sum(c.n_tokens for c in completions) / seconds if seconds > 0 else 0.0


def completions(store, dataset_id: str) -> list[str]:
    """The completion texts of a ``sample_step`` dataset, in its order (by prompt, then sample)."""
    from heredity.store import read_table

    return read_table(store.path(dataset_id)).column("completion").to_pylist()


@op(
    "sample",
    2,
    note="v2: the fused decode step refused for mlp_bias / sliding-window models, whose samples it got wrong",
)
def sample_step(
    store,
    model_spec: str,
    prompts: Sequence[Prompt],
    config: SampleConfig | None = None,
    name: str = "samples",
    progress=True,
    serves: str | None = None,
    template: str | None = None,
) -> str:
    """Sample as a store step: a dataset artifact (prompt, sample_index, completion, finish_reason) whose
    lineage points to the model. Memoized on (model, prompts, config).

    ``serves``: for an ``openai:`` spec, the stored model or adapter the endpoint serves under that name (e.g.
    an adapter it loaded from the store): it enters the step's key and lineage, so the samples point to the
    weights that wrote them. Without it an endpoint's samples are keyed by (model name, URL) alone.

    ``template``: the prompt template (a ``p-`` id or any reference ``Store.resolve_prompt`` takes) that
    rendered ``prompts``: its resolved id is the step's last input, so the samples' lineage names the version
    and a new version is a new step (an alias moved to the same version is not). None: the key is as it
    was."""
    import hashlib
    import json

    from heredity.models import RemoteModel, load, materialize, parse_spec
    from heredity.store import write_table

    config = config or SampleConfig()
    spec = parse_spec(model_spec)
    remote = spec.kind == "openai"
    endpoint = (
        [spec.value, spec.base_url] if remote else None
    )  # (model, base URL) of an OpenAI-compatible server
    if serves is not None and not remote:
        raise HeredityError(
            f"serves= names what an openai: endpoint serves; {model_spec!r} is not an endpoint"
        )
    inputs = ([materialize(serves, store)] if serves else []) if remote else [materialize(spec, store)]
    if template is not None:
        inputs.append(store.resolve_prompt(template))
    prompts_json = json.dumps(list(prompts), sort_keys=True)
    cfg = {
        "sample": config.model_dump(mode="json"),
        "prompts_sha256": hashlib.sha256(prompts_json.encode()).hexdigest(),
        "num_prompts": len(prompts),
        **({"endpoint": endpoint} if remote else {}),
        # text prompts with chat=False go to an endpoint's completions route (they went, wrongly, to its chat
        # route before): in the key, so such samples made the old way are never returned for the new meaning
        **(
            {"route": "completions"}
            if remote and not config.chat and any(isinstance(p, str) for p in prompts)
            else {}
        ),
    }

    def run(ctx):
        if endpoint:
            model, tok = RemoteModel(*endpoint), None
        else:
            model, tok = load(inputs[0], store, merge_adapter=True)
        import time

        t = time.perf_counter()
        comps = sample(model, tok, prompts, config, progress=progress)
        secs = time.perf_counter() - t
        rows = [
            {
                "prompt": json.dumps(prompts[c.prompt_index])
                if not isinstance(prompts[c.prompt_index], str)
                else prompts[c.prompt_index],
                "prompt_index": c.prompt_index,
                "sample_index": c.sample_index,
                "completion": c.text,
                "finish_reason": c.finish_reason,
                "n_tokens": c.n_tokens,
            }
            for c in comps
        ]
        out = ctx.output(
            "dataset", "dataset", name, meta={"rows": len(rows), "columns": list(rows[0]) if rows else []}
        )
        write_table(out, rows)
        return {
            "completions": len(rows),
            "seconds": round(secs, 2),
            "tokens_per_second": round(tokens_per_second(comps, secs), 1),
        }

    return store.run_step("sample", cfg, inputs, run, seed=config.seed)["dataset"]
