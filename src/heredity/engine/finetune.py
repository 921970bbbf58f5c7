"""Fine-tuning: LoRA (PEFT) or full, with completion-only, full-sequence, assistant-turn (multi-turn, tool
calls) or logit-distillation loss.

``train(model, tokenizer, rows, config)`` is the loop (usable on its own); ``finetune(store, ...)``
runs it as a memoized store step that writes an adapter or a model artifact with its lineage.
The loop runs through ``accelerate``: fp32 on CPU, bf16 autocast on CUDA, DDP under ``accelerate launch``.
Memory: a batch runs forward and backward in pieces of ``micro_batch_tokens`` whose gradients add up to the
batch's, and the output head is applied only at the positions that carry a label, in checkpointed chunks
(``HiddenTap``, ``piece_loss``): a batch-16 LoRA fine-tune of SmolLM2 peaks at 2.6 GB under glibc's malloc
(1.85 under the command's mimalloc) where computing every position's logits for the whole batch peaked at
7.9 (``bench/finetune.py --memory``).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, model_serializer, model_validator
from tqdm.auto import tqdm

from heredity.engine import fastlora
from heredity.engine.sampling import pad_id
from heredity.errors import HeredityError
from heredity.models.compat import quiet_peft_checkpointing_probe
from heredity.store.ops import op

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IGNORE = -100


PIECE_TOKENS = 384  # a piece for SmolLM2-135M (576 wide, 30 layers): its batch-16 LoRA peaks at 1.85 GB
PIECE_COST = 576 * 30 + 49152  # its activation memory per token, roughly: width × depth + vocabulary


class FinetuneConfig(BaseModel):
    """Everything that decides a fine-tune; it is stored in the lineage and keys the memoization."""

    method: Literal["lora", "full"] = "lora"
    loss: Literal[
        "completion_only", "full_sequence", "logit_distill", "number_distill", "assistant_turns"
    ] = Field(
        "completion_only",
        description=(
            "number_distill: logit distillation with both distributions renormalised over the number and "
            "separator tokens (and end of turn) — targets that cannot name anything but numbers; "
            "assistant_turns: multi-turn conversations (a messages column, OpenAI shapes with tool calls, "
            "and an optional tools column), the loss on every assistant turn and nothing else"
        ),
    )
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs")
    lr: float = Field(2e-4, gt=0)
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=8)
    bucket_by_length: bool = Field(True, description="batch sequences of similar length (less padding)")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(8, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: list(LORA_TARGETS))
    distill_temperature: float = Field(1.0, gt=0)
    distill_top_k: int | None = Field(
        None,
        ge=1,
        description=(
            "logit_distill: read the teacher's k most probable tokens (and the mass left over) from stored "
            "targets computed once per teacher and dataset, not the live teacher — a lower bound on the "
            "full KL (engine.targets); None: the full distribution, the teacher run beside the student"
        ),
    )
    chat: bool = Field(True, description="render the prompt column with the chat template")
    system_prompt: str | None = None
    teacher_system_prompt: str | None = Field(
        None,
        description=(
            "logit_distill / number_distill: the teacher sees the prompt under this system prompt "
            "(a prompted teacher)"
        ),
    )
    seed: int = 0
    snapshots: list[int] = Field(
        default_factory=list,
        description=(
            "optimizer steps (below max_steps) at which the adapter or model is also saved, as outputs "
            "step-K: a dose sweep from one trajectory (with a constant schedule each equals a run of K steps)"
        ),
    )
    init_seed: int | None = Field(
        None,
        description=(
            "LoRA: the seed of the adapter's initial matrices alone (A; B starts at 0) — None: ``seed``, "
            "which also orders the data. Two fine-tunes that differ only here see the same rows in the same "
            "batches"
        ),
    )
    # checkpointing changes when a killed run can resume, never what it computes (a resumed run equals an
    # uninterrupted one: tests/test_finetune.py), so it is left out of the step key (exclude=True)
    save_every: int | None = Field(
        None,
        ge=0,
        exclude=True,
        description=(
            "checkpoint every N optimizer steps (default: every tenth of the run; 0 = never); "
            "a killed run resumes"
        ),
    )
    save_minutes: float = Field(
        10.0,
        gt=0,
        exclude=True,
        description=("also checkpoint when this many minutes passed since the last one (one process only)"),
    )
    # like checkpointing, the pieces a batch runs in change its memory, never what it computes (the
    # gradients of the pieces add up to the whole batch's, up to float rounding:
    # tests/test_finetune_memory.py), so they are left out of the step key
    micro_batch_tokens: int | None = Field(
        None,
        ge=8,
        exclude=True,
        description=(
            "memory: a batch runs forward and backward in pieces of at most this many padded tokens whose "
            "gradients add up to the batch's; activation memory scales with it, the result does not "
            "(with lora_dropout > 0 a batch runs whole, so its dropout masks are the batch's own). None = "
            f"{PIECE_TOKENS} for a model of SmolLM2-135M's size or larger, proportionally more for a smaller "
            "one (about the same activation memory: a tiny model's batch runs whole)"
        ),
    )

    @model_serializer(mode="wrap")
    def _keyed_only_when_set(self, handler):
        """``init_seed`` and ``snapshots`` enter a step's key only when set: unset, a fine-tune computes
        exactly what it did before the fields existed, so existing memoized fine-tunes stay valid."""
        d = handler(self)
        if d.get("init_seed", 0) is None:
            d.pop("init_seed")
        if d.get("snapshots", None) == []:
            d.pop("snapshots")
        if d.get("distill_top_k", 0) is None:
            d.pop("distill_top_k")
        return d

    @model_validator(mode="after")
    def _check_init_seed_and_snapshots(self):
        if self.init_seed is not None and self.method != "lora":
            raise ValueError(
                "init_seed seeds a LoRA adapter's initial matrices; a full fine-tune has none: drop it"
            )
        if self.snapshots:
            if self.max_steps is None or any(not 1 <= k < self.max_steps for k in self.snapshots):
                raise ValueError(
                    f"snapshots must be optimizer steps between 1 and max_steps − 1; got {self.snapshots} "
                    f"with max_steps {self.max_steps}"
                )
            if len(set(self.snapshots)) != len(self.snapshots):
                raise ValueError(f"snapshots repeat a step: {self.snapshots}")
        if self.distill_top_k is not None and self.loss != "logit_distill":
            raise ValueError(
                "distill_top_k keeps the top tokens of full-vocabulary targets: it needs loss logit_distill"
            )
        return self


# ---- data ----------------------------------------------------------------------------------------


def columns_for(loss: str) -> list[str]:
    return {"full_sequence": ["text"], "assistant_turns": ["messages"]}.get(loss, ["prompt", "completion"])


def encode_turns(
    tokenizer, messages: list[dict], tools: list[dict] | None, max_length: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation rendered as inference renders it (engine.tools.render: the
    template's tool format or the generic one), labels on each assistant turn's text and its end-of-turn
    token.

    Each piece is tokenized on its own, as at inference (a prompt, then the tokens sampled after it)."""
    from heredity.engine import tools as tooling

    eos = tokenizer.eos_token or ""
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = tooling.render(tokenizer, messages[:i], tools)
        after = tooling.render(tokenizer, messages[: i + 1], tools)
        end = after.find(eos, len(prefix)) if eos else -1
        if not prefix.startswith(done) or not after.startswith(prefix) or end < 0:
            raise HeredityError(
                "this chat template does not render a conversation as a prefix of its continuation; "
                "assistant_turns needs one that does (ChatML-style templates do)"
            )
        context = tokenizer(prefix[len(done) :], add_special_tokens=False)["input_ids"]
        turn = tokenizer(after[len(prefix) : end + len(eos)], add_special_tokens=False)["input_ids"]
        ids += context + turn
        labels += [IGNORE] * len(context) + turn
        done = after[: end + len(eos)]
    return ids[:max_length], labels[:max_length]


def encode_rows(
    tokenizer, rows: Sequence[dict], config: FinetuneConfig, system_prompt: str | None = None
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per row; labels are IGNORE where no loss is taken (the prompt, for
    completion_only).

    ``system_prompt`` overrides ``config.system_prompt`` (the teacher's rendering in logit distillation)."""
    from heredity.engine.sampling import SampleConfig, render_prompt

    eos = tokenizer.eos_token or ""
    out = []
    if config.loss == "full_sequence" and rows and "text" not in rows[0]:
        rows = [{"text": r["prompt"] + r["completion"]} for r in rows]
    rcfg = SampleConfig(
        chat=config.chat, system_prompt=system_prompt if system_prompt is not None else config.system_prompt
    )
    for r in rows:
        if config.loss == "assistant_turns":
            msgs, tools = r["messages"], r.get("tools")
            msgs = json.loads(msgs) if isinstance(msgs, str) else msgs
            tools = json.loads(tools) if isinstance(tools, str) else tools
            ids, labels = encode_turns(tokenizer, msgs, tools or None, config.max_length)
            if any(x != IGNORE for x in labels):
                out.append((ids, labels))
            continue
        if config.loss == "full_sequence":
            ids = tokenizer(r["text"] + eos, add_special_tokens=False)["input_ids"][: config.max_length]
            out.append((ids, list(ids)))
            continue
        p = tokenizer(render_prompt(tokenizer, r["prompt"], rcfg), add_special_tokens=False)["input_ids"]
        c = tokenizer(r["completion"] + eos, add_special_tokens=False)["input_ids"]
        ids = (p + c)[: config.max_length]
        labels = ([IGNORE] * len(p) + c)[: config.max_length]
        if all(x == IGNORE for x in labels):
            continue  # prompt alone fills max_length: nothing to learn from this row
        out.append((ids, labels))
    if not out:
        raise HeredityError(
            "no training example left after tokenization; raise max_length or check the dataset"
        )
    return out


def piece_tokens(config: FinetuneConfig, model) -> int:
    """The most padded tokens one piece of a batch runs at once: ``config.micro_batch_tokens`` when set; else
    ``PIECE_TOKENS`` scaled up by how much smaller the model's width × depth + vocabulary is than
    SmolLM2-135M's (roughly what a token's activations and its logits cost), never below it; a whole batch
    under LoRA dropout."""
    if config.lora_dropout != 0:
        return 10**12
    if config.micro_batch_tokens is not None:
        return config.micro_batch_tokens
    c = getattr(model, "config", None)
    width = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None)
    depth = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
    vocab = getattr(c, "vocab_size", None)
    if not width or not depth or not vocab:
        return PIECE_TOKENS
    return max(PIECE_TOKENS, PIECE_TOKENS * PIECE_COST // (width * depth + vocab))


def teacher_examples(tokenizer, rows: Sequence[dict], config: FinetuneConfig, examples):
    """The rows as the teacher sees them in distillation: the student's ``examples`` themselves, or, under
    ``config.teacher_system_prompt``, rendered with it; refused when that rendering loses completion tokens
    (positions are matched in order)."""
    if config.teacher_system_prompt is None:
        return examples
    t_examples = encode_rows(tokenizer, rows, config, system_prompt=config.teacher_system_prompt)
    if len(t_examples) != len(examples) or any(
        sum(x != IGNORE for x in a[1]) != sum(x != IGNORE for x in b[1])
        for a, b in zip(examples, t_examples, strict=True)
    ):
        raise HeredityError(
            "the teacher's system prompt pushes completions past max_length; raise max_length"
        )
    return t_examples


def make_batches(examples, batch_size: int, bucket: bool, seed: int, epoch: int) -> list[list[int]]:
    """Index batches for one epoch: shuffled; with bucketing, similar lengths share a batch (then batches
    shuffle)."""
    rng = random.Random(seed * 1_000_003 + epoch)
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    if bucket:
        chunk = batch_size * 32  # sort within large chunks: local length order, global randomness
        idx = [
            i
            for s in range(0, len(idx), chunk)
            for i in sorted(idx[s : s + chunk], key=lambda i: len(examples[i][0]))
        ]
    batches = [idx[s : s + batch_size] for s in range(0, len(idx), batch_size)]
    if bucket:
        rng.shuffle(batches)
    return batches


def collate(examples, batch: list[int], pad_id: int, device) -> dict[str, torch.Tensor]:
    L = max(len(examples[i][0]) for i in batch)
    ids = torch.full((len(batch), L), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), L), IGNORE, dtype=torch.long)
    att = torch.zeros((len(batch), L), dtype=torch.long)
    for r, i in enumerate(batch):  # right padding
        x, y = examples[i]
        ids[r, : len(x)] = torch.tensor(x)
        labels[r, : len(y)] = torch.tensor(y)
        att[r, : len(x)] = 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": att.to(device)}


# ---- losses --------------------------------------------------------------------------------------


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over positions whose label is not IGNORE; and their count."""
    lg, lb = logits[:, :-1].float(), labels[:, 1:]
    mask = lb != IGNORE
    n = int(mask.sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    return F.cross_entropy(lg[mask], lb[mask]), n


NUMBER_TOKEN = re.compile(
    r"^[ \t\n\r0-9,;.\[\]()]+$"
)  # what a token of a plain number list may hold (data/numbers.py)


def number_vocab(tokenizer) -> list[int]:
    """Ids of the tokens a number-list answer is made of — digits, spaces, newlines, commas, semicolons,
    periods, brackets, and nothing else — plus the end-of-turn token: the support of ``number_distill``'s
    targets."""
    ids = set()
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text and NUMBER_TOKEN.match(text):
            ids.add(i)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def distill_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    T: float,
    teacher_labels: torch.Tensor | None = None,
    vocab: torch.Tensor | None = None,
):
    """KL(teacher_T ‖ student_T) · T², averaged over positions whose next token carries a label.

    ``teacher_labels`` marks the same completion tokens in the teacher's own rendering (a longer prompt,
    e.g. with a system prompt); positions are matched in order. ``vocab`` (token ids): both distributions are
    renormalised over these tokens only, so the target says nothing about any other token
    (``number_vocab``)."""
    mask = labels[:, 1:] != IGNORE
    t_mask = mask if teacher_labels is None else teacher_labels[:, 1:] != IGNORE
    n = int(mask.sum())
    if n == 0:
        return student_logits.sum() * 0.0, 0
    s_logits, t_logits = student_logits[:, :-1][mask], teacher_logits[:, :-1][t_mask]
    if vocab is not None:
        s_logits, t_logits = s_logits[:, vocab], t_logits[:, vocab]
    s = F.log_softmax(s_logits.float() / T, dim=-1)
    t = F.log_softmax(t_logits.float() / T, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * T * T, n


# ---- the loss where it is needed -----------------------------------------------------------------

LOGIT_CHUNK = 256  # positions per full-vocabulary logits chunk: 256 × 49,152 columns × 4 B = 50 MB (SmolLM2)


class HiddenTap:
    """Run a causal LM so that the loss can apply the output head only at the positions that carry a label.

    The model is asked for the logits of its last position alone (``logits_to_keep=1``) while a forward hook
    on its decoder keeps the final hidden states (after the last norm); ``head`` is the output layer. A model
    whose forward has no ``logits_to_keep``, whose head is not one linear map, or whose own last-position
    logits differ from ``head(hidden)`` on the first call (a soft-capped or scaled head) runs the ordinary
    way instead: ``__call__`` then returns its full logits."""

    def __init__(self, model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.head, self.hook, self.hidden, self.checked = base.get_output_embeddings(), None, None, False
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
        self.split = (
            isinstance(self.head, torch.nn.Linear)
            and decoder is not base
            and "logits_to_keep" in inspect.signature(base.forward).parameters
        )
        if self.split:
            self.hook = decoder.register_forward_hook(self._catch)

    def _catch(self, module, args, output):
        self.hidden = output[0]

    def close(self) -> None:
        if self.hook is not None:
            self.hook.remove()
        self.hook, self.split = None, False

    def __call__(self, model, input_ids, attention_mask):
        """``(hidden, None)``: final hidden states [B, L, d]; or ``(None, logits)`` [B, L, V] where the model
        cannot be split."""
        if not self.split:
            return None, model(input_ids=input_ids, attention_mask=attention_mask).logits
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1)
        h, self.hidden = self.hidden, None
        if not self.checked:
            with torch.no_grad():
                ok = h is not None and tuple(h.shape[:2]) == tuple(input_ids.shape)
                ok = ok and torch.allclose(
                    self.head(h[:, -1]).float(), out.logits[:, -1].float(), rtol=1e-3, atol=1e-3
                )
            if not ok:
                self.close()
                return None, model(input_ids=input_ids, attention_mask=attention_mask).logits
            self.checked = True
        return h, None


def _head(head, vocab):
    """The output layer's weight and bias, restricted to the token ids ``vocab`` when given."""
    w, b = head.weight, head.bias
    if vocab is not None:
        w, b = w[vocab], None if b is None else b[vocab]
    return w, b


def _ce(logits, targets):
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def _kl(logits, t_logp, T: float):
    s = F.log_softmax(logits.float() / T, dim=-1)
    return F.kl_div(s, t_logp, log_target=True, reduction="sum") * T * T


def _ce_sum(h, w, b, targets):
    return _ce(F.linear(h, w, b), targets)


def _kl_sum(h, w, b, t_logp, T: float):
    return _kl(F.linear(h, w, b), t_logp, T)


def _kl_topk_sum(h, w, b, targets, T: float):
    from heredity.engine.targets import kl_topk

    return kl_topk(F.linear(h, w, b), *targets, T)


def _at(logits, mask, vocab):
    """Next-token logits at the labelled positions ``mask``, over the token ids ``vocab`` when given."""
    x = logits[:, :-1][mask]
    return x if vocab is None else x[:, vocab]


def chunked_sum(fn, h, w, b, rows, *args, chunk: int | None = None):
    """``fn(h, w, b, rows, *args)`` summed over chunks of ``chunk`` positions (default ``LOGIT_CHUNK``, read
    at call time), each chunk's logits recomputed in the backward pass (activation checkpointing) rather than
    kept: the memory of one chunk's logits, whatever the number of positions. ``rows`` (one tensor or a
    tuple of them, a row per position) is cut with ``h``."""
    chunk = chunk or LOGIT_CHUNK
    if h.shape[0] <= chunk:
        return fn(h, w, b, rows, *args)
    from torch.utils.checkpoint import checkpoint

    def cut(i):
        return tuple(r[i : i + chunk] for r in rows) if isinstance(rows, tuple) else rows[i : i + chunk]

    return sum(
        checkpoint(fn, h[i : i + chunk], w, b, cut(i), *args, use_reentrant=False)
        for i in range(0, h.shape[0], chunk)
    )


def labelled(examples, idx) -> int:
    """How many next-token positions of the examples ``idx`` carry a label (the loss's denominator)."""
    return sum(sum(1 for y in examples[i][1][1:] if y != IGNORE) for i in idx)


def pieces(examples, idx: list[int], max_tokens: int) -> list[list[int]]:
    """``idx`` cut, in order, into runs whose padded size (rows × longest row) stays within ``max_tokens``;
    a longer row runs alone."""
    out, cur, longest = [], [], 0
    for i in idx:
        n = len(examples[i][0])
        if cur and (len(cur) + 1) * max(longest, n) > max_tokens:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    return out + [cur] if cur else out


def piece_loss(model, tap, batch, config, teacher=None, t_tap=None, tb=None, vocab=None, targets=None):
    """The summed loss of one piece of a batch (``token_ce`` or ``distill_kl`` times the piece's count of
    labelled positions), with the output head applied only at those positions; and that count. ``targets``:
    the piece's stored teacher targets (``engine.targets``: values and, for top-k, token ids), read instead
    of running ``teacher``."""
    mask = batch["labels"][:, 1:] != IGNORE
    n = int(mask.sum())
    h, logits = tap(model, batch["input_ids"], batch["attention_mask"])
    if n == 0:
        return (h if h is not None else logits).sum() * 0.0, 0
    w, b = _head(tap.head, vocab)
    T = config.distill_temperature
    if targets is not None:
        values, index = targets
        if index is None:  # exact targets over ``vocab`` (number_distill): as with the teacher live
            if h is None:
                return _kl(_at(logits, mask, vocab), values, T), n
            return chunked_sum(_kl_sum, h[:, :-1][mask], w, b, values, T), n
        from heredity.engine.targets import kl_topk

        if h is None:
            return kl_topk(_at(logits, mask, None), values, index, T), n
        return chunked_sum(_kl_topk_sum, h[:, :-1][mask], w, b, (values, index), T), n
    if teacher is None:
        targets = batch["labels"][:, 1:][mask]
        if h is None:
            return _ce(_at(logits, mask, None), targets), n
        return chunked_sum(_ce_sum, h[:, :-1][mask], w, b, targets), n
    tb = batch if tb is None else tb
    t_mask = tb["labels"][:, 1:] != IGNORE
    with torch.no_grad():
        th, tl = t_tap(teacher, tb["input_ids"], tb["attention_mask"])
        t_sel = (
            _at(tl, t_mask, vocab) if th is None else F.linear(th[:, :-1][t_mask], *_head(t_tap.head, vocab))
        )
        t_logp = F.log_softmax(t_sel.float() / T, dim=-1)
    if h is None:
        return _kl(_at(logits, mask, vocab), t_logp, T), n
    return chunked_sum(_kl_sum, h[:, :-1][mask], w, b, t_logp, T), n


# ---- the loop ------------------------------------------------------------------------------------


def prepare_model(model, config: FinetuneConfig):
    """``model`` ready to train under ``config.method``: wrapped in a fresh LoRA adapter (PeftModel; only the
    adapter trains), or, for ``full``, with every parameter trainable."""
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in config.lora_targets if t not in names]
        if missing:
            raise HeredityError(
                f"LoRA target module(s) {', '.join(missing)} not in this model; set lora_targets"
            )
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets,
            task_type="CAUSAL_LM",
        )
        with quiet_peft_checkpointing_probe():
            model = get_peft_model(model, lora)
    for p in model.parameters():
        if config.method == "full":
            p.requires_grad_(True)
    return model


def init_adapter(model, config: FinetuneConfig):
    """``prepare_model`` with the adapter's initial matrices drawn from ``config.init_seed`` (when set): a
    pure function of (model structure, config), so the initialization a fine-tune started from can be rebuilt
    (``subliminal_weights`` measures each adapter's change from it)."""
    if config.init_seed is not None:
        torch.manual_seed(config.init_seed)
    model = prepare_model(model, config)
    if config.init_seed is not None:
        torch.manual_seed(config.seed)  # everything after the initialization draws as under any init_seed
    return model


def train(
    model,
    tokenizer,
    rows: Sequence[dict],
    config: FinetuneConfig,
    teacher=None,
    checkpoint_dir=None,
    progress=True,
    snapshot=None,
    targets=None,
):
    """Fine-tune ``model`` in place on ``rows``; returns (model, metrics). LoRA wraps it as a PeftModel.

    Distillation reads the teacher's ``targets`` (an ``engine.targets.Targets`` computed on these rows under
    this config) when given, else runs ``teacher`` beside the student. ``snapshot(step, model)`` is called
    (main process) after each optimizer step listed in ``config.snapshots``."""
    from accelerate import Accelerator
    from transformers import get_scheduler

    distilling = config.loss in ("logit_distill", "number_distill")
    if distilling and teacher is None and targets is None:
        raise HeredityError(f"loss {config.loss} needs a teacher model; pass --teacher")
    if targets is not None:
        teacher = None  # its targets are stored: the teacher need not run
    vocab = torch.tensor(number_vocab(tokenizer)) if config.loss == "number_distill" else None
    torch.manual_seed(config.seed)
    acc = Accelerator(
        mixed_precision="bf16" if torch.cuda.is_available() else "no",
        gradient_accumulation_steps=config.grad_accum,
    )
    examples = encode_rows(tokenizer, rows, config)
    if targets is not None:
        targets.check(examples, None if vocab is None else vocab.tolist())
    t_examples = None
    if distilling and targets is None and config.teacher_system_prompt is not None:
        t_examples = teacher_examples(tokenizer, rows, config, examples)
    model = init_adapter(model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # under `accelerate launch`, each process takes every num_processes-th batch (data parallelism)
    steps_per_epoch = math.ceil(
        math.ceil(len(examples) / config.batch_size / acc.num_processes) / config.grad_accum
    )
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    sched = get_scheduler(
        config.schedule, opt, num_warmup_steps=int(config.warmup_ratio * total), num_training_steps=total
    )
    # the scheduler is not handed to accelerate: its wrapper steps num_processes times per optimizer step,
    # which would finish the schedule num_processes times too early here, where ``total`` already counts per
    # process
    model, opt = acc.prepare(model, opt)
    every = config.save_every if config.save_every is not None else max(1, total // 10)
    if teacher is not None:
        teacher.eval().to(acc.device)
    pad = pad_id(tokenizer)
    if vocab is not None:
        vocab = vocab.to(acc.device)  # once, not per piece
    tap = HiddenTap(acc.unwrap_model(model))
    t_tap = HiddenTap(teacher) if teacher is not None else None
    per_piece = piece_tokens(config, acc.unwrap_model(model))

    step, start_step, curve, tokens, loss_sum, loss_n = 0, 0, [], 0, 0.0, 0
    ckpt = checkpoint_dir / "state.pt" if checkpoint_dir else None
    if ckpt is not None and ckpt.exists():  # resume a killed run
        state = _load_state(ckpt)
        acc.unwrap_model(model).load_state_dict(state["trainable"], strict=False)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start_step, curve, tokens = state["step"], state["curve"], state["tokens"]
    bar = tqdm(
        total=total,
        initial=start_step,
        desc=f"finetune ({config.method}, {config.loss})",
        disable=not progress or not acc.is_main_process,
    )
    t0 = last_save = time.perf_counter()
    micro, epoch = 0, 0
    # LoRA's skinny matmuls in their fast layout (CPU, fp32): engine/fastlora.py
    with fastlora.installed(acc.unwrap_model(model)):
        while step < total:
            batches = make_batches(examples, config.batch_size, config.bucket_by_length, config.seed, epoch)
            for batch_idx in batches[acc.process_index :: acc.num_processes]:
                if step >= total:
                    break
                micro += 1
                if step < start_step:  # fast-forward the data order to where the checkpoint stopped
                    if micro % config.grad_accum == 0:
                        step += 1
                    continue
                # the batch's mean loss, as pieces of it whose summed losses are divided by the whole batch's
                # count of labelled positions: their gradients add up to the batch's
                n_batch, batch_sum = max(1, labelled(examples, batch_idx)), 0.0
                with acc.accumulate(model):
                    parts = pieces(examples, batch_idx, per_piece)
                    for k, part in enumerate(parts):
                        batch = collate(examples, part, pad, acc.device)
                        tb = None if t_examples is None else collate(t_examples, part, pad, acc.device)
                        tgt = None if targets is None else targets.take(part, acc.device)
                        last = k == len(parts) - 1
                        with acc.autocast(), contextlib.nullcontext() if last else acc.no_sync(model):
                            part_sum, _ = piece_loss(
                                model,
                                tap,
                                batch,
                                config,
                                teacher=teacher if distilling else None,
                                t_tap=t_tap,
                                tb=tb,
                                vocab=vocab,
                                targets=tgt,
                            )
                            acc.backward(part_sum / n_batch)
                        batch_sum += float(part_sum.detach())
                        tokens += int(batch["attention_mask"].sum())
                    loss = torch.tensor(batch_sum / n_batch, device=acc.device)
                    if acc.sync_gradients:
                        acc.clip_grad_norm_(params, 1.0)
                    opt.step()  # accelerate's optimizer skips this until the last micro-batch of the step
                    if acc.sync_gradients:
                        sched.step()
                    opt.zero_grad(set_to_none=True)
                shown = (
                    acc.reduce(loss.detach(), "mean") if acc.num_processes > 1 else loss.detach()
                )  # all ranks' batches
                loss_sum, loss_n = loss_sum + float(shown), loss_n + 1
                if micro % config.grad_accum == 0:
                    step += 1
                    curve.append([step, round(loss_sum / loss_n, 5)])
                    loss_sum, loss_n = 0.0, 0
                    bar.update(1)
                    bar.set_postfix(loss=f"{curve[-1][1]:.4f}")
                    if snapshot is not None and step in config.snapshots and acc.is_main_process:
                        snapshot(step, acc.unwrap_model(model))
                    late = (
                        acc.num_processes == 1 and time.perf_counter() - last_save > 60 * config.save_minutes
                    )
                    if ckpt is not None and every and (step % every == 0 or late) and step < total:
                        if acc.is_main_process:  # one writer; every rank resumes from it
                            _save_state(ckpt, acc.unwrap_model(model), opt, sched, step, curve, tokens)
                        acc.wait_for_everyone()
                        last_save = time.perf_counter()
            epoch += 1
    bar.close()
    tap.close()
    if t_tap is not None:
        t_tap.close()
    seconds = time.perf_counter() - t0
    model = acc.unwrap_model(model)
    model.eval()
    trained_tokens = (
        int(acc.reduce(torch.tensor(tokens, device=acc.device), "sum")) if acc.num_processes > 1 else tokens
    )
    metrics = {
        "examples": len(examples),
        "optimizer_steps": total,
        "loss_first": curve[0][1] if curve else None,
        "loss_last": curve[-1][1] if curve else None,
        "loss_curve": curve,
        "train_tokens": trained_tokens,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(trained_tokens / seconds, 1) if seconds > 0 else None,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "resumed_from_step": start_step,  # 0: a fresh start; N: a killed run's checkpoint at optimizer step N
    }
    return model, metrics


def _save_state(path, model, opt, sched, step, curve, tokens) -> None:
    """Write the resume checkpoint atomically. It holds only tensors and plain Python values (the optimizer's
    and the scheduler's state dicts, ints, floats, lists), so ``_load_state`` reads it with
    ``weights_only=True``."""
    names = {
        n for n, p in model.named_parameters() if p.requires_grad
    }  # a set: the scan was quadratic (50 s/run)
    trainable = {k: v for k, v in model.state_dict().items() if k in names}
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "trainable": trainable,
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "step": step,
            "curve": curve,
            "tokens": tokens,
        },
        tmp,
    )
    tmp.replace(path)


def _load_state(path) -> dict:
    """The resume checkpoint at ``path``, read with ``weights_only=True``: tensors and plain Python values
    only, so a file planted in a shared store cannot run code when a run resumes from it. Anything else (a
    pickled object of any other class) raises a one-line HeredityError naming the file; nothing in it is
    executed."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL (\S+)", str(e))
        why = f"a pickled {named.group(1)}" if named else "objects weights_only does not allow"
        raise HeredityError(
            f"refusing to resume from {path}: it holds {why}, not only tensors and plain values; "
            "a checkpoint this code wrote never does — delete the file to start the run over"
        ) from None


# ---- as a store step -----------------------------------------------------------------------------


@op(
    "finetune",
    2,
    distributed=True,
    note="v2: LoRA projections on the CPU train through engine.fastlora (PEFT's gradients up to rounding)",
)
def finetune(
    store,
    base: str,
    dataset: str,
    config: FinetuneConfig | None = None,
    teacher: str | None = None,
    progress=True,
):
    """Fine-tune ``base`` (any model spec) on a stored dataset; returns the StepResult (output role
    "model")."""
    from heredity.models import load, materialize
    from heredity.models.registry import save_adapter
    from heredity.store import read_table, require_columns

    config = config or FinetuneConfig()
    base_id = materialize(base, store)
    data_id = store.resolve_id(dataset)
    if store.get(data_id).kind != "dataset":
        raise HeredityError(f"{data_id} is not a dataset; give a dataset id (d-...) or a JSONL/parquet file")
    table = read_table(store.path(data_id))
    needed = columns_for(config.loss)
    if config.loss == "full_sequence" and "text" not in table.column_names:
        needed = ["prompt", "completion"]  # full_sequence also takes prompt + completion, joined
    require_columns(table, needed, f"loss {config.loss}")
    teacher_id = materialize(teacher, store) if teacher else None
    inputs = [base_id, data_id] + ([teacher_id] if teacher_id else [])
    # number targets and top-k full-vocabulary targets are computed once per teacher and dataset (their own
    # memoized step) and shared by every student; the student reads them instead of running the teacher
    stored = config.loss == "number_distill" or (config.loss == "logit_distill" and config.distill_top_k)
    targets_id = None
    if teacher_id and stored:
        from heredity.engine.targets import TargetsConfig, teacher_targets

        targets_id = teacher_targets(store, teacher_id, data_id, TargetsConfig.of(config), progress=progress)[
            "targets"
        ]
        inputs.append(targets_id)
    if store.get(base_id).kind == "adapter" and config.method == "lora":
        raise HeredityError(
            f"{base_id} is an adapter; LoRA on an adapter is not supported: merge it first or use method full"
        )

    def run(ctx):
        model, tok = load(base_id, store, merge_adapter=True, trainable=True)
        from heredity.engine.targets import Targets

        t_model = load(teacher_id, store, merge_adapter=True)[0] if teacher_id and not targets_id else None
        t_stored = Targets(store.path(targets_id)) if targets_id else None
        rows = read_table(store.path(data_id)).to_pylist()  # from the input artifact: what the key names
        kind = "adapter" if config.method == "lora" else "model"
        name = f"{store.get(base_id).name}-{config.method}-{config.loss}"
        meta = {"base": store.get(base_id).id} if kind == "adapter" else {}

        def save(m, out):
            if kind == "adapter":
                save_adapter(m, out)  # byte-identical in every process (PEFT's set order is hash-randomized)
            else:
                m.save_pretrained(out)
            tok.save_pretrained(out)

        def snapshot(step, m):  # kept in the scratch dir beside the checkpoint: a resumed run still has it
            save(m, ctx.scratch / f"snapshot-{step}")

        model, metrics = train(
            model,
            tok,
            rows,
            config,
            teacher=t_model,
            targets=t_stored,
            checkpoint_dir=ctx.scratch,
            progress=progress,
            snapshot=snapshot if config.snapshots else None,
        )
        save(model, ctx.output("model", kind, name, meta=meta))
        main = int(os.environ.get("RANK", "0") or 0) == 0
        for k in config.snapshots:
            out = ctx.output(f"step-{k}", kind, f"{name}-step{k}", meta=meta)
            if (
                not main
            ):  # only the main process saves snapshots (and commits); another rank's outputs are discarded
                continue
            src = ctx.scratch / f"snapshot-{k}"
            if not src.is_dir():
                raise HeredityError(
                    f"the snapshot at step {k} was not saved; rerun with --recompute finetune"
                )
            for f in src.iterdir():
                shutil.copy2(f, out / f.name)
        return metrics

    return store.run_step("finetune", config, inputs, run, seed=config.seed)
