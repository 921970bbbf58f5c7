"""The loop closed: the feedback a served model got in the lab → training data → a LoRA adapter on that model
→ evaluated against it on held-out feedback → served under a movable alias if it is not worse.

One round (``run_round``), each part a store step so ``heredity lineage ALIAS`` goes back through every round
to the conversations that made it:

1. **Feedback** given to the alias's models (or to ``base`` before the first round) that no promoted round of
   the alias trained on (a round that was not promoted leaves its feedback for the next; a round with no new
   feedback at all is refused): every rated assistant answer (thumbs, and "better answer" edits) of the lab's
   conversations. A conversation is **held out** for good when the hash of its id falls below ``holdout``
   (the same split in every round): its feedback is never trained on and is what every round is evaluated on.
2. **Datasets** from the training feedback (``loop-feedback``): SFT rows (a better answer, or an answer rated
   up), DPO pairs (a better answer over the answer it replaced; an answer rated up over one rated down for the
   same messages), KTO rows (every rated answer, desirable or not; a better answer is a desirable row too).
3. **A method chosen by what the data supports** (``method="auto"``, stated in the round record): DPO when the
   pairs reach ``min_feedback``, else KTO when the ratings do and hold both signs, else SFT when the desirable
   rows do; anything less is refused before any compute, saying how much there is and how much is needed.
4. **Training**: a LoRA adapter on the alias's current model (an adapter is merged first, so rounds stack):
   SFT through ``engine.finetune``, DPO and KTO through TRL's trainers with a PEFT LoRA config.
5. **Evaluation** (``loop-eval``) of old and new on the held-out feedback: *agreement*, the share of held-out
   rated answers whose log-likelihood per token moved the way the user rated it (up for liked, down for
   disliked: a model that learned nothing scores 0); each configured *check* (a regex an answer should match)
   on both models' greedy answers to the held-out prompts, with McNemar's exact test; a *judge* reward model's
   win rate when one is given; and what the new model picked up: answer length and refusal rate, old vs new.
6. **Promotion**: the new adapter takes the alias only if it is not worse beyond ``margin`` on the primary
   measure (the first check, else the judge, else agreement): the lower end of the 95% interval of new − old
   (a check) or of the rate (agreement, win rate: against 0.5) must not fall below −margin. Every move of the
   alias is recorded with its reason; ``rollback`` moves it back to where it pointed before.

Every p-value and interval here is over held-out items of one trained model: a statement about this round's
adapter, not about the method.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from heredity.data import put_rows
from heredity.errors import HeredityError
from heredity.store import Store, read_table
from heredity.store.db import ModelAliasMoveRow, ModelAliasRow
from heredity.store.ops import op, rows_op
from heredity.store.store import _now, _who, finite_json

rows_op("loop-feedback")  # the round's feedback rows and datasets, by data.io.put_rows
ALIAS_RE = re.compile(r"[a-z][a-z0-9._-]{0,63}")
REFUSAL = re.compile(r"\b(i can(?:no|')t|i am unable|i'm unable|i'm sorry|i am sorry|as an ai)\b", re.I)
Method = Literal["sft", "dpo", "kto"]


class Check(BaseModel):
    """A verifiable behaviour the user wants: an answer passes when ``pattern`` (a regex, case-insensitive)
    occurs in it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    pattern: str = Field(min_length=1, max_length=500)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"check pattern {v!r} is not a regular expression: {e}") from None
        return v


class LoopConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field("lab-latest", description="the movable name the lab serves the newest model under")
    base: str = Field(
        "smollm2-135m-instruct", description="the model the first round starts from (any model spec)"
    )
    method: Literal["auto", "sft", "dpo", "kto"] = "auto"
    min_feedback: int = Field(8, ge=1, description="training rows the chosen method needs at the least")
    min_eval: int = Field(4, ge=1, description="held-out rated answers needed to evaluate a round")
    holdout: float = Field(0.25, gt=0, lt=1, description="share of conversations held out for good")
    margin: float = Field(0.05, ge=0, lt=1, description="how much worse the new model may be and still serve")
    checks: list[Check] = Field(default_factory=list)
    judge: str | None = Field(None, description="a stored reward model (r-… or its name) for a win rate")
    steps: int = Field(30, ge=1, description="optimizer steps")
    lr: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    beta: float = Field(0.1, gt=0, description="DPO / KTO β")
    max_length: int = Field(256, ge=16)
    max_new_tokens: int = Field(48, ge=1, description="for the held-out answers the checks read")
    seed: int = 0

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if not ALIAS_RE.fullmatch(v) or re.match(r"^[mdartp]-[0-9a-f]", v):
            raise ValueError(
                f"alias {v!r} must be lowercase letters, digits, '.', '_' or '-', start with a letter, and "
                "not look like an artifact id (e.g. lab-latest)"
            )
        from heredity.models import parse_spec

        try:
            parse_spec(v)
        except HeredityError:
            return v
        raise ValueError(
            f"alias {v!r} already names a model (`heredity models`); pick another, e.g. lab-latest"
        )


# ---- aliases -------------------------------------------------------------------------------------------


def move_alias(store: Store, alias: str, target: str, reason: str, by: str | None = None) -> dict:
    """Point ``alias`` at the model or adapter ``target``, recording who, when, from where and why."""
    LoopConfig(alias=alias)  # the alias's own checks
    aid = store.resolve_id(target)
    art = store.get(aid, verify_files=False)
    if art.kind not in ("model", "adapter"):
        raise HeredityError(f"{aid} is a {art.kind}; an alias points to a model (m-…) or an adapter (a-…)")
    from heredity.engine.retrieval import is_encoder

    if (art.meta or {}).get("head") == "reward" or is_encoder(art):
        raise HeredityError(
            f"{aid} is a reward model or a sentence encoder; an alias points to a model that writes answers"
        )
    who = by or _who()
    lock = hashlib.sha256(f"model-alias\0{alias}".encode()).hexdigest()
    with store.step_lock(lock, f"alias {alias}"), Session(store.engine) as s:
        row = s.get(ModelAliasRow, alias)
        was, now = (row.artifact_id if row else None), _now()
        if was != aid:
            if row is None:
                s.add(ModelAliasRow(alias=alias, artifact_id=aid, updated_at=now, updated_by=who))
            else:
                row.artifact_id, row.updated_at, row.updated_by = aid, now, who
            s.add(
                ModelAliasMoveRow(
                    alias=alias, from_id=was, to_id=aid, reason=reason, moved_at=now, moved_by=who
                )
            )
            s.commit()
    return {"alias": alias, "from": was, "to": aid, "moved": was != aid, "reason": reason}


def alias_history(store: Store, alias: str) -> list[dict]:
    """Every move of ``alias``, oldest first."""
    with Session(store.engine) as s:
        rows = s.scalars(
            select(ModelAliasMoveRow).where(ModelAliasMoveRow.alias == alias).order_by(ModelAliasMoveRow.id)
        )
        return [
            {
                "from": r.from_id,
                "to": r.to_id,
                "reason": r.reason,
                "moved_at": r.moved_at.isoformat(),
                "moved_by": r.moved_by,
            }
            for r in rows
        ]


def rollback(store: Store, alias: str, by: str | None = None) -> dict:
    """Move ``alias`` back to where it pointed before the last move not already rolled back: rollbacks stack,
    so two rollbacks after promotions A → B → C serve A, never C again (refused when nothing is left to
    undo)."""
    current = store.model_alias(alias)
    if current is None:
        raise HeredityError(f"no model alias {alias!r} in this store; `heredity loop ls` lists them")
    undone, target = 0, None
    for m in reversed(alias_history(store, alias)):
        if m["reason"].startswith("rollback"):
            undone += 1  # each rollback cancels the latest move before it that is not itself cancelled
        elif undone:
            undone -= 1
        else:
            target = m["from"]
            break
    if target is None:
        raise HeredityError(
            f"alias {alias!r} has no earlier model to roll back to (every move since it was set is undone)"
        )
    return move_alias(store, alias, target, f"rollback from {current}", by)


def aliases(store: Store) -> dict[str, str]:
    with Session(store.engine) as s:
        return {
            r.alias: r.artifact_id for r in s.scalars(select(ModelAliasRow).order_by(ModelAliasRow.alias))
        }


# ---- feedback → rows ------------------------------------------------------------------------------------


def held_out(conversation_id: str, share: float) -> bool:
    """Whether a conversation is held out: the same answer in every round (its id's hash, not a draw)."""
    h = int.from_bytes(hashlib.sha256(f"loop-holdout\0{conversation_id}".encode()).digest()[:8], "big")
    return h / 2**64 < share


def served_names(store: Store, config: LoopConfig) -> set[str]:
    """Every name feedback for this loop was given under: the alias, everything it has pointed to, the base
    (as written and as its id)."""
    names = {config.alias, config.base}
    # the base's stored id, if it is stored (found, never converted here: a refusal comes before any compute;
    # a base not stored yet cannot have answered under its id)
    names |= {a.id for a in store.list() if a.kind in ("model", "adapter") and a.name == config.base}
    if (target := _stored_id(store, config.base)) is not None:
        names.add(target)
    for m in alias_history(store, config.alias):
        names |= {m["to"]} | ({m["from"]} if m["from"] else set())
    return names


def _stored_id(store: Store, ref: str) -> str | None:
    try:
        return store.resolve_id(ref)
    except HeredityError:
        return None


def feedback_items(store: Store, config: LoopConfig) -> list[dict]:
    """Every rated answer given to this loop's models: ``{conversation_id, message_idx, prompt (messages),
    answer, rating, better, held_out}``, oldest conversation first."""
    from heredity.store.conversations import Conversations

    names = served_names(store, config)
    items = []
    for c in Conversations(store).with_feedback():
        system = [{"role": "system", "content": c.system_prompt}] if c.system_prompt else []
        for i, m in enumerate(c.messages):
            if m.role != "assistant" or not (m.rating or m.better) or (m.model or c.model) not in names:
                continue
            items.append(
                {
                    "conversation_id": c.id,
                    "message_idx": i,
                    "prompt": system + [{"role": x.role, "content": x.content} for x in c.messages[:i]],
                    "answer": m.content,
                    "rating": int(m.rating or 0),
                    "better": m.better,
                    "held_out": held_out(c.id, config.holdout),
                }
            )
    return items


def training_rows(items: list[dict]) -> dict[str, list[dict]]:
    """The SFT, DPO and KTO rows the training feedback makes: SFT and DPO by the lab's export rules
    (``data.feedback.rows_from_rated``), KTO every rated answer with its label (a better answer desirable,
    the answer it replaced not)."""
    from heredity.data.feedback import rows_from_rated

    sft, prefs = rows_from_rated([{**it, "trace": {}} for it in items])
    kto = []
    for it in items:
        if it["better"]:
            kto += [
                {"prompt": it["prompt"], "completion": it["better"], "label": True},
                {"prompt": it["prompt"], "completion": it["answer"], "label": False},
            ]
        elif it["rating"]:
            kto.append({"prompt": it["prompt"], "completion": it["answer"], "label": it["rating"] > 0})
    return {
        "sft": [{"prompt": r["messages"][:-1], "completion": r["messages"][-1]["content"]} for r in sft],
        "dpo": [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in prefs],
        "kto": kto,
    }


def choose_method(config: LoopConfig, rows: dict[str, list[dict]]) -> tuple[Method, str]:
    """The method the data supports (or the one asked for, if the data supports it), and why; a one-line
    refusal naming the counts when nothing does."""
    need = config.min_feedback
    n_pairs, n_kto, n_sft = len(rows["dpo"]), len(rows["kto"]), len(rows["sft"])
    signs = {r["label"] for r in rows["kto"]}
    have = f"{n_sft} SFT rows, {n_pairs} preference pairs, {n_kto} rated answers"
    supported = {
        "dpo": n_pairs >= need,
        "kto": n_kto >= need and len(signs) == 2,
        "sft": n_sft >= need,
    }
    if config.method != "auto":
        if not supported[config.method]:
            what = {
                "dpo": "preference pairs",
                "kto": "rated answers with both thumbs up and down",
                "sft": "better or thumbs-up answers",
            }[config.method]
            raise HeredityError(
                f"round refused: {config.method} needs {need} {what} since the last round and there are "
                f"{have}; "
                "rate more answers on /chat, or lower min_feedback"
            )
        return config.method, f"asked for {config.method} ({have})"
    for m, why in (
        ("dpo", f"{n_pairs} preference pairs reach {need}"),
        ("kto", f"{n_kto} rated answers of both signs reach {need} (pairs: {n_pairs})"),
        ("sft", f"{n_sft} desirable answers reach {need} (pairs: {n_pairs}, ratings of one sign only)"),
    ):
        if supported[m]:
            return m, f"auto: {why}"
    raise HeredityError(
        f"round refused: too little feedback since the last round ({have}); each method needs {need} rows "
        "(rate more answers on /chat, or lower min_feedback)"
    )


# ---- training ------------------------------------------------------------------------------------------


def _lora(r: int, alpha: int):
    from peft import LoraConfig

    from heredity.engine.finetune import LORA_TARGETS

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )


@op("loop-preference", 1)
def preference_adapter(
    store: Store, base: str, dataset: str, method: Method, config: LoopConfig, progress: bool = True
) -> str:
    """A LoRA adapter on ``base`` trained by TRL's DPO or KTO trainer on a stored dataset (DPO: prompt /
    chosen / rejected; KTO: prompt / completion / label); returns the adapter's id."""
    import torch

    from heredity.engine.sampling import as_messages
    from heredity.models import load

    train_cfg = {
        k: getattr(config, k)
        for k in ("steps", "lr", "batch_size", "lora_r", "lora_alpha", "beta", "max_length", "seed")
    }

    def run(ctx):
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

        from heredity.engine.trl_rl import _args, _history
        from heredity.models.registry import save_adapter

        rows = read_table(store.path(dataset)).to_pylist()
        lm, tok = load(base, store, trainable=True, dtype=torch.float32)
        if method == "dpo":
            ds = [
                {
                    "prompt": as_messages(r["prompt"]),
                    "chosen": [{"role": "assistant", "content": r["chosen"]}],
                    "rejected": [{"role": "assistant", "content": r["rejected"]}],
                }
                for r in rows
            ]
            cls, trainer_cls = DPOConfig, DPOTrainer
        else:
            ds = [
                {
                    "prompt": as_messages(r["prompt"]),
                    "completion": [{"role": "assistant", "content": r["completion"]}],
                    "label": bool(r["label"]),
                }
                for r in rows
            ]
            cls, trainer_cls = KTOConfig, KTOTrainer
        from heredity.engine.trl_rl import TRLConfig

        c = ctx.config
        tcfg = TRLConfig(
            steps=c["steps"],
            lr=c["lr"],
            beta=c["beta"],
            batch_size=max(2, c["batch_size"]),
            max_length=c["max_length"],
            seed=c["seed"],
        )
        args = _args(
            cls,
            tcfg,
            str(ctx.scratch / "trl"),
            per_device_train_batch_size=tcfg.batch_size,
            max_length=c["max_length"],
            gradient_checkpointing=False,  # TRL's default recomputes every activation: 135M needs no saving
        )
        t0 = time.perf_counter()
        trainer = trainer_cls(
            model=lm,
            args=args,
            train_dataset=Dataset.from_list(ds),
            processing_class=tok,
            peft_config=_lora(c["lora_r"], c["lora_alpha"]),
        )
        trainer.train()
        out = ctx.output(
            "model", "adapter", f"{store.get(base).name}-{method}", meta={"base": base, "origin": method}
        )
        save_adapter(trainer.model, out)
        tok.save_pretrained(out)
        return {"seconds": round(time.perf_counter() - t0, 1), "log": _history(trainer), "rows": len(rows)}

    return store.run_step(
        "loop-preference", {"method": method, **train_cfg}, [base, dataset], run, seed=config.seed
    )["model"]


def train_adapter(
    store: Store, base: str, data_id: str, method: Method, config: LoopConfig, progress: bool
) -> str:
    if method == "sft":
        from heredity.engine.finetune import FinetuneConfig, finetune

        ft = FinetuneConfig(
            method="lora",
            lr=config.lr,
            max_steps=config.steps,
            batch_size=config.batch_size,
            lora_r=config.lora_r,
            lora_alpha=config.lora_alpha,
            max_length=config.max_length,
            seed=config.seed,
        )
        return finetune(store, base, data_id, ft, progress=progress)["model"]
    return preference_adapter(store, base, data_id, method, config, progress)


# ---- evaluation ----------------------------------------------------------------------------------------


@op("loop-eval", 1)
def evaluate(
    store: Store, old: str, new: str, heldout_id: str, config: LoopConfig, progress: bool = True
) -> dict:
    """Old against new on the held-out feedback (see the module docstring); memoized."""
    cfg = {
        "checks": [c.model_dump() for c in config.checks],
        "judge": config.judge,
        "max_new_tokens": config.max_new_tokens,
        "alias": config.alias,
        "decoding": "greedy",
    }
    judge_id = store.resolve_id(config.judge) if config.judge else None
    inputs = [old, new, heldout_id] + ([judge_id] if judge_id else [])

    def run(ctx):
        from heredity.engine import SampleConfig, sample
        from heredity.engine.logprobs import logprobs
        from heredity.models import load

        rows = read_table(store.path(heldout_id)).to_pylist()
        scored = [
            (r["prompt"], r["answer"], 1 if r["rating"] > 0 else -1)
            for r in rows
            if r["rating"] and not r["better"]
        ]
        scored += [(r["prompt"], r["better"], 1) for r in rows if r["better"]]
        scored += [(r["prompt"], r["answer"], -1) for r in rows if r["better"]]
        prompts = list({json.dumps(r["prompt"]): r["prompt"] for r in rows}.values())
        out: dict = {"items": len(scored), "prompts": len(prompts)}
        per_model = {}
        for role, mid in (("old", old), ("new", new)):
            model, tok = load(mid, store, merge_adapter=True)
            lps = logprobs(model, tok, [p for p, _, _ in scored], [a for _, a, _ in scored])
            answers = [
                c.text
                for c in sample(
                    model,
                    tok,
                    prompts,
                    SampleConfig(temperature=0, max_new_tokens=ctx.config["max_new_tokens"]),
                    progress=progress,
                )
            ]
            per_model[role] = {"logprob": [sum(x) / max(len(x), 1) for x in lps], "answers": answers}
        out["agreement"] = [
            int(y * (n - o) > 0)
            for (_, _, y), o, n in zip(
                scored, per_model["old"]["logprob"], per_model["new"]["logprob"], strict=True
            )
        ]
        out["answers"] = {k: v["answers"] for k, v in per_model.items()}
        out["prompts_text"] = [p[-1]["content"] if p else "" for p in prompts]
        if judge_id:
            from heredity.engine.reward import reward_function
            from heredity.models.registry import default_device

            _, fn = reward_function(store, judge_id, default_device())
            out["judge"] = {k: fn(prompts, v["answers"]) for k, v in per_model.items()}
        path = ctx.output("eval", "report", f"loop-eval-{ctx.config['alias']}")
        (path / "eval.json").write_text(json.dumps(out))
        return {"agreement": sum(out["agreement"]) / max(len(scored), 1)}

    rid = store.run_step("loop-eval", cfg, inputs, run)["eval"]
    return {**json.loads((store.path(rid) / "eval.json").read_text()), "id": rid}


def _words(text: str) -> int:
    return len(text.split())


def measures(ev: dict, config: LoopConfig) -> dict:
    """The round's statistics from the raw evaluation: agreement (a rate against 0.5), each check old → new
    (McNemar), the judge's win rate, and what the new model picked up (length, refusals). Unit: held-out
    items, one trained model."""
    from heredity.reports.stats import paired_rate_test, paired_test, rate_ci

    unit_items = "held-out rated answers, one trained adapter"
    unit_prompts = "held-out prompts, one trained adapter"
    old, new = ev["answers"]["old"], ev["answers"]["new"]
    agree = ev["agreement"]
    out = {"agreement": {**rate_ci(sum(agree), len(agree)), "unit": unit_items}}
    out["checks"] = {}
    for c in config.checks:
        rx = re.compile(c.pattern, re.I)
        a, b = [int(bool(rx.search(x))) for x in new], [int(bool(rx.search(x))) for x in old]
        out["checks"][c.name] = {
            "old": rate_ci(sum(b), len(b)),
            "new": rate_ci(sum(a), len(a)),
            "test": paired_rate_test(a, b, unit_prompts),
        }
    if "judge" in ev:
        jo, jn = ev["judge"]["old"], ev["judge"]["new"]
        decided = [(n > o) for o, n in zip(jo, jn, strict=True) if n != o]
        out["judge"] = {
            **rate_ci(sum(decided), len(decided)),
            "ties": len(jo) - len(decided),
            "unit": unit_prompts,
        }
    lengths = paired_test([_words(x) for x in new], [_words(x) for x in old], unit_prompts)
    refusals = paired_rate_test(
        [int(bool(REFUSAL.search(x))) for x in new], [int(bool(REFUSAL.search(x))) for x in old], unit_prompts
    )
    out["inherited"] = {"length_words": lengths, "refusals": refusals}
    return out


def promotion(stats: dict, config: LoopConfig) -> dict:
    """The promotion rule on the primary measure, its numbers and its verdict."""
    m = config.margin
    if config.checks:
        name = config.checks[0].name
        t = stats["checks"][name]["test"]
        ok = t["lo"] >= -m
        rule = f"check {name!r}: the 95% interval of new − old pass rate must not fall below −{m}"
        shown = f"new − old = {t['diff']:+.3f} [{t['lo']:.3f}, {t['hi']:.3f}]"
    else:
        key = "judge" if "judge" in stats else "agreement"
        r = stats[key]
        ok = r["n"] > 0 and r["lo"] >= 0.5 - m
        what = (
            "the judge's win rate of new over old" if key == "judge" else "agreement with held-out feedback"
        )
        rule = f"{what}: the lower end of its 95% Wilson interval must not fall below 0.5 − {m}"
        shown = f"{r['mean']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}] over {r['n']} items"
    return {"rule": rule, "measured": shown, "promote": bool(ok)}


# ---- one round ------------------------------------------------------------------------------------------


def rounds(store: Store, alias: str | None = None) -> list[dict]:
    """The round records (oldest first), every alias's or one alias's."""
    out = []
    for a in store.list("report"):
        if a.name != "loop-round":
            continue
        rec = json.loads((store.path(a.id) / "round.json").read_text())
        if alias is None or rec["alias"] == alias:
            out.append({**rec, "id": a.id})
    return sorted(out, key=lambda r: (r["alias"], r["round"]))


@op("loop-round", 1)
def run_round(
    store: Store, config: LoopConfig, progress: bool = True, on_progress: Callable[[str], None] | None = None
) -> dict:
    """One round of the loop (see the module docstring); returns the round record. Too little feedback, or
    too little held out to judge the round, is refused before any compute."""
    from heredity.models import materialize, merge_adapter

    say = on_progress or (lambda s: None)
    t0 = time.perf_counter()
    if config.judge:
        from heredity.engine.reward import check_reward_model

        check_reward_model(store, store.resolve_id(config.judge))
    previous = rounds(store, config.alias)
    # feedback a promoted round trained on is in the served model; a round that was not promoted left its
    # feedback unused, so the next round trains on it again, with whatever came since
    used = {(k[0], k[1]) for r in previous if r["decision"]["promote"] for k in r["trained_on"]}
    items = feedback_items(store, config)
    train = [
        it for it in items if not it["held_out"] and (it["conversation_id"], it["message_idx"]) not in used
    ]
    heldout = [it for it in items if it["held_out"]]
    keys = sorted([it["conversation_id"], it["message_idx"]] for it in train)
    if previous and keys and keys == sorted(previous[-1]["trained_on"]):
        raise HeredityError(
            f"round refused: no new feedback since round {previous[-1]['round']} of {config.alias}, which "
            "trained on exactly these answers; rate more answers on /chat first"
        )
    rows = training_rows(train)
    method, why = choose_method(config, rows)
    n_eval = sum(1 for h in heldout if h["rating"] or h["better"])
    if n_eval < config.min_eval:
        raise HeredityError(
            f"round refused: {n_eval} rated answers are held out for evaluation and {config.min_eval} are "
            "needed "
            f"(a share {config.holdout} of conversations is held out); rate answers in more conversations"
        )
    say(f"{method}: {why}")
    if store.model_alias(config.alias) is None:  # the loop starts: the alias serves the base
        move_alias(store, config.alias, materialize(config.base, store), "the loop's start: the base model")
    current = store.model_alias(config.alias)
    base = merge_adapter(store, current) if store.get(current).kind == "adapter" else current
    convs = put_rows(
        store,
        [{**it, "prompt": json.dumps(it["prompt"])} for it in train + heldout],
        f"{config.alias}-conversations",
        op="loop-feedback",
        config={"alias": config.alias, "round": len(previous) + 1},
        inputs=[current],
    )
    data_id = put_rows(
        store,
        rows[method],
        f"{config.alias}-{method}",
        op="loop-feedback",
        config={"method": method},
        inputs=[convs],
    )
    heldout_id = put_rows(
        store,
        [{**h, "better": h["better"] or ""} for h in heldout],
        f"{config.alias}-heldout",
        op="loop-feedback",
        config={"held_out": config.holdout},
        inputs=[convs],
    )
    say(f"training a LoRA adapter on {base} ({config.steps} steps)")
    adapter = train_adapter(store, base, data_id, method, config, progress)
    say("evaluating old and new on the held-out feedback")
    ev = evaluate(store, current, adapter, heldout_id, config, progress)
    stats = measures(ev, config)
    decision = promotion(stats, config)
    record = {
        "alias": config.alias,
        "round": len(previous) + 1,
        "old": current,
        "new": adapter,
        "method": method,
        "why": why,
        "counts": {
            "training_feedback": len(train),
            "held_out_feedback": len(heldout),
            **{f"{k}_rows": len(v) for k, v in rows.items()},
        },
        "trained_on": [[it["conversation_id"], it["message_idx"]] for it in train],
        "datasets": {"conversations": convs, "train": data_id, "held_out": heldout_id},
        "config": config.model_dump(),
        "stats": stats,
        "decision": decision,
        "samples": [
            {"prompt": p, "old": o, "new": n}
            for p, o, n in list(
                zip(ev["prompts_text"], ev["answers"]["old"], ev["answers"]["new"], strict=True)
            )[:6]
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }

    record = finite_json(record)  # NaN → None: the record as round.json holds it

    def write(ctx):
        rec = ctx.config["record"]
        out = ctx.output(
            "report", "report", "loop-round", meta={"alias": rec["alias"], "round": rec["round"]}
        )
        (out / "round.json").write_text(json.dumps(rec, indent=2))
        return {"promote": rec["decision"]["promote"]}

    rid = store.run_step(
        "loop-round", {"record": record}, [convs, data_id, heldout_id, current, adapter, ev["id"]], write
    )["report"]
    record["id"] = rid
    if decision["promote"]:
        record["alias_move"] = move_alias(
            store, config.alias, adapter, f"round {record['round']} ({rid}): promoted"
        )
    say("promoted" if decision["promote"] else "kept the old model: " + decision["measured"])
    return record
