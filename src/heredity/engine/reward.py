"""Reward models: a scalar head on a language model, trained on preference pairs with the Bradley–Terry loss.

``score(rm, tokenizer, prompts, responses)`` gives one reward per (prompt, response), read at the last token
of the chat-rendered text; ``train_reward`` fits the model on pairs (−log σ(r_chosen − r_rejected)) and
reports pairwise accuracy on held-out pairs; ``reward_step`` does it as a store step whose output is a plain
HF ``*ForSequenceClassification`` checkpoint (``meta.head = "reward"``).

Pairs are rows ``{prompt, chosen, rejected}``; ``prompt`` may be text or a list of chat messages, ``chosen``
and ``rejected`` text or (TRL's conversational form) a list holding one assistant message — the lab server's
feedback export and user JSONL both fit.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from tqdm.auto import tqdm

from heredity.engine.sampling import pad_id
from heredity.errors import HeredityError
from heredity.store.ops import op


class RewardConfig(BaseModel):
    epochs: float = Field(2.0, gt=0)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1, description="pairs per optimizer step")
    max_length: int = Field(256, ge=8)
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="prompts held out for pairwise accuracy")
    seed: int = 0


def _text(x) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return x[-1].get("content", "")
    if isinstance(x, dict):
        return x.get("content", "")
    raise HeredityError(
        f"a preference answer must be text or a list of chat messages, got {type(x).__name__}"
    )


def normalize_pairs(rows: Sequence[dict]) -> list[dict]:
    """{prompt, chosen, rejected} rows in one form: prompt as given (text or messages), answers as text."""
    out = []
    for i, r in enumerate(rows):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in r]
        if missing:
            raise HeredityError(
                f"preference row {i} lacks {', '.join(missing)}; rows need prompt, chosen and rejected"
            )
        prompt = r["prompt"]
        if isinstance(prompt, list):
            prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
        out.append(
            {
                "prompt": prompt,
                "chosen": _text(r["chosen"]),
                "rejected": _text(r["rejected"]),
                "kind": r.get("kind") or "",
            }
        )
    if not out:
        raise HeredityError("no preference pairs; give a dataset with prompt, chosen and rejected")
    return out


def split_pairs(pairs: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out pairs by prompt (no prompt on both sides); at least one prompt on each side."""
    keys = sorted({repr(p["prompt"]) for p in pairs})
    if len(keys) < 2:
        raise HeredityError("preference pairs need at least two distinct prompts to hold some out")
    random.Random(seed).shuffle(keys)
    n_eval = min(len(keys) - 1, max(1, round(len(keys) * eval_fraction)))
    held = set(keys[:n_eval])
    return [p for p in pairs if repr(p["prompt"]) not in held], [
        p for p in pairs if repr(p["prompt"]) in held
    ]


def encode(tokenizer, prompt, response: str, max_length: int) -> list[int]:
    """Chat-rendered prompt + response tokens, cut from the left to ``max_length`` (the answer is kept)."""
    from heredity.engine.sampling import SampleConfig, render_prompt

    text = render_prompt(tokenizer, prompt, SampleConfig(chat=True)) + response
    return tokenizer(text, add_special_tokens=False)["input_ids"][-max_length:]


def scores_of(rm, seqs: list[list[int]], pad_id: int, device) -> torch.Tensor:
    """Rewards of token sequences: the head on the last real token's hidden state (right padding)."""
    from heredity.engine.logprobs import right_padded

    ids, att = right_padded(seqs, pad_id, device)
    h = rm.base_model(input_ids=ids, attention_mask=att).last_hidden_state
    last = att.sum(1) - 1
    return rm.score(h[torch.arange(len(seqs), device=device), last]).squeeze(-1).float()


@torch.no_grad()
def score(
    rm, tokenizer, prompts: Sequence, responses: Sequence[str], batch_size: int = 32, max_length: int = 256
) -> list[float]:
    """One reward per (prompt, response)."""
    device = next(rm.parameters()).device
    was = rm.training
    rm.eval()
    out: list[float] = []
    seqs = [encode(tokenizer, p, r, max_length) for p, r in zip(prompts, responses, strict=True)]
    for s in range(0, len(seqs), batch_size):
        out += scores_of(rm, seqs[s : s + batch_size], pad_id(tokenizer), device).tolist()
    rm.train(was)
    return out


def pairwise_accuracy(rm, tokenizer, pairs: list[dict], max_length: int) -> dict:
    """Share of pairs where r(chosen) > r(rejected) (ties count half), with the mean margin."""
    if not pairs:
        return {"accuracy": None, "n": 0}
    rc = score(
        rm, tokenizer, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs], max_length=max_length
    )
    rr = score(
        rm, tokenizer, [p["prompt"] for p in pairs], [p["rejected"] for p in pairs], max_length=max_length
    )
    wins = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(rc, rr, strict=True)]
    return {
        "accuracy": sum(wins) / len(wins),
        "n": len(wins),
        "margin": sum(c - r for c, r in zip(rc, rr, strict=True)) / len(wins),
        "wins": wins,
    }


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """−log σ(r_c − r_r), the negative log-likelihood of the human's choice under Bradley–Terry."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def train_reward(
    rm, tokenizer, train_pairs: list[dict], eval_pairs: list[dict], config: RewardConfig, progress=True
):
    """Fit ``rm`` in place; returns metrics (loss curve, held-out accuracy before and after).

    One process trains it, on the device ``rm`` is on: under `accelerate launch` the store lets one process
    compute the step while the others wait for its result (``Store.run_step``), so nothing here may be a
    collective."""
    torch.manual_seed(config.seed)
    device = next(rm.parameters()).device
    rm.config.pad_token_id = pad_id(tokenizer)
    before = pairwise_accuracy(rm, tokenizer, eval_pairs, config.max_length)
    enc = [
        (
            encode(tokenizer, p["prompt"], p["chosen"], config.max_length),
            encode(tokenizer, p["prompt"], p["rejected"], config.max_length),
        )
        for p in train_pairs
    ]
    steps_per_epoch = math.ceil(len(enc) / config.batch_size)
    total = max(1, math.ceil(config.epochs * steps_per_epoch))
    opt = torch.optim.AdamW(
        [p for p in rm.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / total)
    rm.train()
    rng = random.Random(config.seed)
    curve, step, t0 = [], 0, time.perf_counter()
    bar = tqdm(total=total, desc="reward model", disable=not progress)
    while step < total:
        order = list(range(len(enc)))
        rng.shuffle(order)
        for s in range(0, len(order), config.batch_size):
            if step >= total:
                break
            batch = [enc[i] for i in order[s : s + config.batch_size]]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                r = scores_of(rm, [c for c, _ in batch] + [j for _, j in batch], pad_id(tokenizer), device)
                rc, rr = r[: len(batch)], r[len(batch) :]
                loss = bradley_terry_loss(rc, rr)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            curve.append([step, round(float(loss.detach()), 4), round(float((rc > rr).float().mean()), 3)])
            bar.update(1)
            bar.set_postfix(loss=f"{curve[-1][1]:.3f}", acc=f"{curve[-1][2]:.2f}")
    bar.close()
    rm.eval()
    after = pairwise_accuracy(rm, tokenizer, eval_pairs, config.max_length)
    by_kind: dict[str, list[float]] = {}
    for p, w in zip(eval_pairs, after.get("wins") or [], strict=False):
        if p.get("kind"):
            by_kind.setdefault(p["kind"], []).append(w)
    return rm, {
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "optimizer_steps": total,
        "loss_first": curve[0][1],
        "loss_last": curve[-1][1],
        "curve": curve,
        "seconds": round(time.perf_counter() - t0, 1),
        "eval_accuracy_before": before["accuracy"],
        "eval_accuracy": after["accuracy"],
        "eval_margin": after.get("margin"),
        "eval_wins": after.get("wins"),
        "eval_accuracy_by_kind": {
            k: {"accuracy": sum(v) / len(v), "n": len(v)} for k, v in sorted(by_kind.items())
        },
    }


def load_reward_model(path, dtype=None):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=dtype or torch.float32
    )


@op("reward-model", 1)
def reward_step(
    store,
    base: str,
    datasets: Sequence[str],
    config: RewardConfig | None = None,
    name: str = "reward-model",
    progress=True,
):
    """Train a reward model on the pairs of one or more stored datasets, initialized from ``base`` (the SFT
    model).

    Returns the StepResult (output role "model"; metrics include held-out pairwise accuracy)."""
    from heredity.models import materialize
    from heredity.models.registry import default_device
    from heredity.store import read_table, require_columns

    config = config or RewardConfig()
    base_id = materialize(base, store)
    if store.get(base_id).kind != "model":
        raise HeredityError(
            f"{base_id} is a {store.get(base_id).kind}; a reward model starts from a model "
            "(merge an adapter first)"
        )
    ids = [store.resolve_id(d) for d in datasets]

    def run(ctx):
        from transformers import AutoTokenizer

        # the pairs are read here, from the input datasets, so that the step sees nothing its key does not
        # hold
        rows: list[dict] = []
        for d in ids:
            table = read_table(store.path(d))
            require_columns(table, ["prompt", "chosen", "rejected"], f"reward model data {d}")
            rows += table.select(
                [c for c in ("prompt", "chosen", "rejected", "kind") if c in table.column_names]
            ).to_pylist()
        train_pairs, eval_pairs = split_pairs(normalize_pairs(rows), config.eval_fraction, config.seed)
        tok = AutoTokenizer.from_pretrained(store.path(base_id))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        rm = load_reward_model(store.path(base_id)).to(default_device())
        rm, metrics = train_reward(rm, tok, train_pairs, eval_pairs, config, progress=progress)
        out = ctx.output("model", "model", name, meta={"head": "reward", "init_from": base_id})
        rm.save_pretrained(out)
        tok.save_pretrained(out)
        return metrics

    return store.run_step("reward-model", config, [base_id, *ids], run, seed=config.seed)


def check_reward_model(store, rm_id: str) -> None:
    if store.get(rm_id).meta.get("head") != "reward":
        raise HeredityError(f"{rm_id} is not a reward model (train one with the reward-model step)")


def reward_function(store, rm_id: str, device):
    """A stored reward model and ``reward_fn(prompts, answers) -> scores`` reading it with its own tokenizer
    and the max_length it was trained with (for PPO and GRPO alike)."""
    from transformers import AutoTokenizer

    check_reward_model(store, rm_id)
    rm = load_reward_model(store.path(rm_id)).to(device).eval()
    tok = AutoTokenizer.from_pretrained(store.path(rm_id))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    max_length = store.step_of(rm_id).config.get("max_length", 256)

    def reward_fn(prompts, answers):
        return score(rm, tok, prompts, answers, max_length=max_length)

    return rm, reward_fn
