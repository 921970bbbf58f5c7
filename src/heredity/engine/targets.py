"""Teacher targets computed once: a teacher's distillation targets on a dataset, stored as a compact artifact
that every student of that teacher reads — same-init, other-init, every seed and dose — instead of running
the teacher again beside each student.

    teacher_targets(store, teacher, dataset, TargetsConfig.of(finetune_config))  # a store step, memoized
    Targets(store.path(targets_id)).take(examples)                                # one piece's targets

What is stored, per position whose next token carries a label (in the order ``engine.finetune``'s loss takes
them):

- ``number_distill``: the teacher's log-probabilities at temperature T over the number vocabulary (289 tokens
  in SmolLM2). **Exact**: a student's loss and gradients from them equal those with the teacher run live, up
  to float rounding (tests/test_targets.py).
- ``logit_distill`` with ``top_k = k``: the k most probable tokens' log-probabilities at T and the log of the
  mass left over. The student's loss is then the KL between the two distributions coarsened to k + 1
  outcomes (those k tokens and "any other"). **Not exact**: by the chain rule of KL,
  ``KL(p ‖ q) = KL_coarse(p ‖ q) + r · KL(p_rest ‖ q_rest)`` with r the teacher's leftover mass, so the
  coarsened loss is never more than the full one and misses exactly that last term (tested); the artifact's
  metrics give r's mean and maximum. Without ``top_k``, full-vocabulary distillation runs the teacher live.

The artifact is a dataset-kind directory holding ``targets.safetensors`` (``values`` [positions, width]
float32 — for top-k the last column is the log leftover mass —, ``index`` [positions, k] int32 for top-k,
``vocab`` for number targets, ``offsets`` [examples + 1]) and ``targets.json`` (what it is).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from heredity.errors import HeredityError
from heredity.store.ops import op

FORMAT = "teacher-targets/1"


class TargetsConfig(BaseModel):
    """Everything that decides a teacher's targets on a dataset, and nothing a student's seed, initialization,
    schedule or step count decides: every student of one teacher on one dataset shares them."""

    model_config = ConfigDict(extra="forbid")

    loss: Literal["logit_distill", "number_distill"]
    temperature: float = Field(1.0, gt=0)
    top_k: int | None = Field(
        None, ge=1, description="logit_distill: tokens kept per position; the rest is one leftover mass"
    )
    chat: bool = True
    system_prompt: str | None = None
    teacher_system_prompt: str | None = None
    max_length: int = Field(512, ge=8)

    @model_validator(mode="after")
    def _check(self):
        if self.loss == "number_distill" and self.top_k is not None:
            raise ValueError("number_distill's targets are exact (the number vocabulary); drop top_k")
        if self.loss == "logit_distill" and self.top_k is None:
            raise ValueError("stored full-vocabulary targets need top_k (without it the teacher runs live)")
        return self

    @classmethod
    def of(cls, config) -> TargetsConfig:
        """The targets a fine-tune under ``config`` (a ``FinetuneConfig``) reads."""
        return cls(
            loss=config.loss,
            temperature=config.distill_temperature,
            top_k=config.distill_top_k,
            chat=config.chat,
            system_prompt=config.system_prompt,
            teacher_system_prompt=config.teacher_system_prompt,
            max_length=config.max_length,
        )

    def encoding(self):
        """The ``FinetuneConfig`` whose ``encode_rows`` / ``teacher_examples`` give the student's and the
        teacher's examples."""
        from heredity.engine.finetune import FinetuneConfig

        return FinetuneConfig(
            loss=self.loss,
            chat=self.chat,
            system_prompt=self.system_prompt,
            teacher_system_prompt=self.teacher_system_prompt,
            max_length=self.max_length,
        )


def aligned_examples(tokenizer, rows, config: TargetsConfig):
    """(student examples, teacher examples) of ``rows`` under ``config`` (``finetune.teacher_examples``)."""
    from heredity.engine.finetune import encode_rows, teacher_examples

    fcfg = config.encoding()
    examples = encode_rows(tokenizer, rows, fcfg)
    return examples, teacher_examples(tokenizer, rows, fcfg, examples)


def counts(examples) -> list[int]:
    """Per example, its positions whose next token carries a label (where a target is stored)."""
    from heredity.engine.finetune import labelled

    return [labelled(examples, [i]) for i in range(len(examples))]


def from_logp(logp: torch.Tensor, top_k: int | None):
    """(values, index) stored for log-probabilities ``logp`` [n, V]: all of them (index None), or the top k
    and, in values' last column, the log of the mass outside them."""
    if top_k is None:
        return logp, None
    vals, idx = logp.topk(top_k, dim=-1)
    rest = logp.scatter(1, idx, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([vals, rest], dim=1), idx.to(torch.int32)


def kl_topk(logits: torch.Tensor, values: torch.Tensor, index: torch.Tensor, T: float) -> torch.Tensor:
    """Summed KL, times T², between the teacher's stored top-k targets (``values``: k log-probabilities and
    the log leftover mass; ``index``: the k token ids) and the student's ``logits`` [n, V], both coarsened to
    the k tokens and "any other"."""
    s = F.log_softmax(logits.float() / T, dim=-1)
    idx = index.long()
    s_top, s_rest = s.gather(1, idx), s.scatter(1, idx, float("-inf")).logsumexp(-1)
    t_top, t_rest = values[:, :-1], values[:, -1]
    kl = (t_top.exp() * (t_top - s_top)).sum() + (t_rest.exp() * (t_rest - s_rest)).sum()
    return kl * T * T


def compute(teacher, tokenizer, rows, config: TargetsConfig, batch_tokens: int = 2048, progress=False):
    """The targets of ``teacher`` on ``rows`` under ``config``: (tensors to store, metrics). The teacher runs
    once per row, in length-sorted batches of at most ``batch_tokens`` padded tokens, under ``no_grad``; its
    output head is applied only at labelled positions (number rows alone for number targets), in chunks."""
    from heredity.engine.finetune import (
        IGNORE,
        LOGIT_CHUNK,
        HiddenTap,
        _at,
        _head,
        collate,
        number_vocab,
        pieces,
    )
    from heredity.engine.sampling import pad_id

    examples, t_examples = aligned_examples(tokenizer, rows, config)
    vocab = torch.tensor(number_vocab(tokenizer)) if config.loss == "number_distill" else None
    V = teacher.get_output_embeddings().weight.shape[0]
    if config.top_k is not None and config.top_k >= V:
        raise HeredityError(f"top_k {config.top_k} is not below the vocabulary ({V}); drop top_k to run live")
    device = next(teacher.parameters()).device
    if vocab is not None:
        vocab = vocab.to(device)
    teacher.eval()
    tap, pad, T = HiddenTap(teacher), pad_id(tokenizer), config.temperature
    order = sorted(range(len(t_examples)), key=lambda i: len(t_examples[i][0]))
    parts = pieces(t_examples, order, batch_tokens)
    out: list = [None] * len(t_examples)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )
    bar = tqdm(total=len(t_examples), desc="teacher targets", disable=not progress)
    with torch.no_grad(), autocast:
        for part in parts:
            batch = collate(t_examples, part, pad, device)
            mask = batch["labels"][:, 1:] != IGNORE
            h, logits = tap(teacher, batch["input_ids"], batch["attention_mask"])
            sel = h[:, :-1][mask] if h is not None else _at(logits, mask, None)
            w, b = _head(tap.head, vocab)
            vals, idx = [], []
            for s in range(0, sel.shape[0], LOGIT_CHUNK):
                x = sel[s : s + LOGIT_CHUNK]
                lg = F.linear(x, w, b) if h is not None else (x if vocab is None else x[:, vocab])
                v, i = from_logp(F.log_softmax(lg.float() / T, dim=-1), config.top_k)
                vals.append(v.cpu())
                idx.append(None if i is None else i.cpu())
            vals = torch.cat(vals) if vals else torch.zeros(0, 0)
            idx = (
                None
                if config.top_k is None
                else (torch.cat(idx) if idx else torch.zeros(0, 0, dtype=torch.int32))
            )
            n = mask.sum(1).tolist()
            for r, (v, i) in enumerate(
                zip(vals.split(n), idx.split(n) if idx is not None else [None] * len(n), strict=True)
            ):
                out[part[r]] = (v, i)
            bar.update(len(part))
    bar.close()
    tap.close()
    offsets = torch.tensor([0, *counts(examples)]).cumsum(0)
    tensors = {"values": torch.cat([v for v, _ in out]).contiguous(), "offsets": offsets}
    if config.top_k is not None:
        tensors["index"] = torch.cat([i for _, i in out]).contiguous()
    if vocab is not None:
        tensors["vocab"] = vocab.cpu()
    metrics = {
        "examples": len(examples),
        "positions": int(offsets[-1]),
        "width": int(tensors["values"].shape[1]),
    }
    metrics["bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
    if config.top_k is not None:
        left = tensors["values"][:, -1].exp()
        metrics["leftover_mass_mean"] = round(float(left.mean()), 6) if len(left) else 0.0
        metrics["leftover_mass_max"] = round(float(left.max()), 6) if len(left) else 0.0
    return tensors, metrics


def save(out: str | Path, tensors: dict, meta: dict | None = None) -> Path:
    """Write ``compute``'s tensors (and what they are, ``meta``) as a targets directory ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "targets.safetensors"))
    (out / "targets.json").write_text(json.dumps({**(meta or {}), "format": FORMAT}, indent=1))
    return out


class Targets:
    """A stored targets artifact, read lazily: ``take`` loads only the rows a piece of a batch needs."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        path = Path(path)
        self.meta = json.loads((path / "targets.json").read_text())
        if self.meta.get("format") != FORMAT:
            raise HeredityError(f"{path} is not a teacher-targets artifact ({FORMAT})")
        self._file = safe_open(str(path / "targets.safetensors"), framework="pt")
        self.offsets = self._file.get_tensor("offsets").tolist()
        names = set(self._file.keys())
        self.vocab = self._file.get_tensor("vocab") if "vocab" in names else None
        self._values = self._file.get_slice("values")
        self._index = self._file.get_slice("index") if "index" in names else None

    def check(self, examples, vocab: list[int] | None) -> None:
        """Refuse targets that do not line up with a student's ``examples`` (its tokenizer or rendering
        differs from the teacher's) or whose number vocabulary is not the student's ``vocab``."""
        got = [b - a for a, b in zip(self.offsets, self.offsets[1:], strict=False)]
        if got != counts(examples):
            raise HeredityError(
                "the teacher's targets do not line up with the student's examples (a different tokenizer or "
                "chat template); distill between models that share a tokenizer"
            )
        if (self.vocab is None) != (vocab is None) or (
            vocab is not None and self.vocab.tolist() != list(vocab)
        ):
            raise HeredityError(
                "the teacher's number vocabulary differs from the student's; share a tokenizer"
            )

    def take(self, idx: list[int], device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The targets of examples ``idx``, concatenated in that order: (values, index or None)."""
        o = self.offsets
        vals = torch.cat([self._values[o[i] : o[i + 1]] for i in idx])
        index = None if self._index is None else torch.cat([self._index[o[i] : o[i + 1]] for i in idx])
        if device is not None:
            vals = vals.to(device)
            index = None if index is None else index.to(device)
        return vals, index


@op("teacher-targets", 1)
def teacher_targets(store, teacher: str, dataset: str, config: TargetsConfig, progress=True):
    """The targets ``teacher`` gives on a stored dataset under ``config``, as a memoized store step (output
    role "targets", a dataset-kind directory): what every student of this teacher on this dataset reads."""
    from heredity.models import load, materialize
    from heredity.store import read_table

    teacher_id = materialize(teacher, store)
    data_id = store.resolve_id(dataset)

    def run(ctx):
        model, tok = load(teacher_id, store, merge_adapter=True)
        if torch.cuda.is_available():
            model = model.to("cuda")
        rows = read_table(store.path(data_id)).to_pylist()
        tensors, metrics = compute(model, tok, rows, config, progress=progress)
        meta = {"format": FORMAT, **config.model_dump(), **metrics}
        save(
            ctx.output("targets", "dataset", f"{store.get(teacher_id).name}-targets", meta=meta),
            tensors,
            meta,
        )
        return metrics

    return store.run_step("teacher-targets", config, [teacher_id, data_id], run)
